#include "mergeserve/base/huge_buffer.h"

#include <sys/mman.h>

#include <map>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace mergeserve {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kSmallPage = 4096;

// Freed huge-page mappings by size. A sweep's points allocate the same
// sizes again and again (one per tensor); reusing a mapping skips the
// kernel's zeroing of every page and, on a VM, the host's first touch.
struct Pool {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free;  // mapped size -> mappings
  size_t bytes = 0;
};
Pool& ThePool() {
  static Pool* pool = new Pool();  // never destroyed: used from destructors
  return *pool;
}

void* TakePooled(size_t mapped) {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  auto it = pool.free.find(mapped);
  if (it == pool.free.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  pool.bytes -= mapped;
  return p;
}

bool GiveToPool(void* p, size_t mapped) {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  if (pool.bytes + mapped > HugeBuffer::kPoolBytes) return false;
  pool.free[mapped].push_back(p);
  pool.bytes += mapped;
  return true;
}
}  // namespace

HugeBuffer HugeBuffer::Uninitialized(size_t bytes) {
  if (bytes >= kHugePage) {
    const size_t mapped = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    HugeBuffer b;
    if (void* p = TakePooled(mapped)) {
      b.data_ = p;
      b.size_ = bytes;
      b.mapped_ = mapped;
    } else {
      b = HugeBuffer(bytes);
    }
    b.pooled_ = true;
    return b;
  }
  return HugeBuffer(bytes);
}

void HugeBuffer::ReleasePool() {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  for (auto& [mapped, list] : pool.free) {
    for (void* p : list) ::munmap(p, mapped);
  }
  pool.free.clear();
  pool.bytes = 0;
}

size_t HugeBuffer::PooledBytes() {
  Pool& pool = ThePool();
  std::lock_guard<std::mutex> lock(pool.mu);
  return pool.bytes;
}

void HugeBuffer::Release() {
  if (data_ == nullptr) return;
  if (!pooled_ || !GiveToPool(data_, mapped_)) {
    ::munmap(data_, mapped_);
  }
  data_ = nullptr;
}

HugeBuffer::HugeBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  // Under one huge page, small pages: a 4 KiB tensor must not hold 2 MiB.
  const bool huge = bytes >= kHugePage;
  const size_t unit = huge ? kHugePage : kSmallPage;
  mapped_ = (bytes + unit - 1) / unit * unit;
  void* p = ::mmap(nullptr, mapped_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Advice only: without THP the buffer works with small pages.
  if (huge) ::madvise(p, mapped_, MADV_HUGEPAGE);
  data_ = p;
}

HugeBuffer::~HugeBuffer() { Release(); }

HugeBuffer::HugeBuffer(HugeBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)),
      pooled_(std::exchange(other.pooled_, false)) {}

HugeBuffer& HugeBuffer::operator=(HugeBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
    pooled_ = std::exchange(other.pooled_, false);
  }
  return *this;
}

}  // namespace mergeserve
