#include "mergeserve/format/mapped_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {
namespace {

uint64_t PageSize() {
  static const uint64_t kPage = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return kPage;
}

// --- SIGBUS guard -----------------------------------------------------------
// A fixed table the handler can scan without locks: slots are claimed under
// a mutex (never in the handler) and published with release stores.
constexpr int kGuardSlots = 16384;
struct GuardSlot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<bool> faulted{false};
};
GuardSlot g_slots[kGuardSlots];
std::mutex g_slots_mu;
int g_next_free = 0;
uintptr_t g_page_mask = 0;  // set before the handler is installed
struct sigaction g_previous;

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (int i = 0; i < kGuardSlots; ++i) {
    const uintptr_t b = g_slots[i].begin.load(std::memory_order_acquire);
    if (b == 0 || addr < b ||
        addr >= g_slots[i].end.load(std::memory_order_acquire)) {
      continue;
    }
    // The page lies past the file's new end. Replace it by a zero page so
    // the faulting read completes; the owner sees `faulted` and fails the
    // request. mmap is a plain system call here, safe in a handler.
    void* page = reinterpret_cast<void*>(addr & g_page_mask);
    if (mmap(page, static_cast<size_t>(~g_page_mask + 1), PROT_READ,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
      g_slots[i].faulted.store(true, std::memory_order_release);
      return;
    }
    break;
  }
  // Not one of our mappings: put the previous disposition back; the fault
  // repeats and takes its usual course.
  sigaction(SIGBUS, &g_previous, nullptr);
  (void)sig;
  (void)context;
}

void InstallGuard() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page_mask = ~static_cast<uintptr_t>(PageSize() - 1);
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &g_previous);
  });
}

int ClaimSlot(const uint8_t* data, uint64_t size) {
  InstallGuard();
  std::lock_guard<std::mutex> lock(g_slots_mu);
  for (int n = 0; n < kGuardSlots; ++n) {
    const int i = (g_next_free + n) % kGuardSlots;
    if (g_slots[i].begin.load(std::memory_order_relaxed) != 0) continue;
    g_slots[i].faulted.store(false, std::memory_order_relaxed);
    g_slots[i].end.store(reinterpret_cast<uintptr_t>(data) + size,
                         std::memory_order_release);
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(data),
                           std::memory_order_release);
    g_next_free = (i + 1) % kGuardSlots;
    return i;
  }
  return -1;  // table full: this mapping is read unguarded
}

void FreeSlot(int i) {
  if (i < 0) return;
  std::lock_guard<std::mutex> lock(g_slots_mu);
  g_slots[i].begin.store(0, std::memory_order_release);
  g_slots[i].end.store(0, std::memory_order_release);
}

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
         st.st_mtim.tv_nsec;
}

}  // namespace

std::string RealPathOfFd(int fd, const std::string& fallback) {
  char link[64];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char real[4096];
  const ssize_t n = ::readlink(link, real, sizeof real - 1);
  return n > 0 ? std::string(real, static_cast<size_t>(n)) : fallback;
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path) {
  std::unique_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (m->fd_ < 0) return ErrnoStatus(errno, absl::StrCat("cannot open ", path));
  struct stat st;
  if (::fstat(m->fd_, &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  m->real_path_ = RealPathOfFd(m->fd_, path);
  m->size_ = static_cast<uint64_t>(st.st_size);
  m->mtime_ns_ = MtimeNs(st);
  if (m->size_ > 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, m->fd_, 0);
    if (p == MAP_FAILED) {
      return ErrnoStatus(errno, absl::StrCat("cannot mmap ", path));
    }
    m->data_ = static_cast<const uint8_t*>(p);
    m->slot_ = ClaimSlot(m->data_, m->size_);
  }
  return m;
}

MappedFile::~MappedFile() {
  FreeSlot(slot_);
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

absl::Status MappedFile::CheckUnchanged() const {
  if (slot_ >= 0 && g_slots[slot_].faulted.load(std::memory_order_acquire)) {
    return absl::DataLossError(
        absl::StrCat("file ", path_,
                     " was truncated while it was being read (re-saved in "
                     "place?); its data is incomplete"));
  }
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot stat ", path_));
  }
  if (static_cast<uint64_t>(st.st_size) != size_ || MtimeNs(st) != mtime_ns_) {
    return absl::DataLossError(absl::StrCat(
        "file ", path_,
        " was modified while it was being read (size or modification time "
        "changed); its data cannot be trusted"));
  }
  return absl::OkStatus();
}

void MappedFile::Release(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || length == 0) return;
  // Rounding outwards is safe: the mapping is read-only, so a page another
  // thread still reads is simply faulted back in from the page cache.
  const uint64_t page = PageSize();
  const uint64_t begin = offset / page * page;
  const uint64_t end = std::min(offset + length, size_);
  if (end <= begin) return;
  ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

void MappedFile::Prefetch(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || length == 0) return;
  const uint64_t page = PageSize();
  const uint64_t begin = offset / page * page;
  const uint64_t end = std::min(offset + length, size_);
  // In pieces: the kernel reads at most its readahead window (a few MiB)
  // of one WILLNEED call and drops the rest.
  constexpr uint64_t kPiece = uint64_t{2} << 20;
  for (uint64_t at = begin; at < end; at += kPiece) {
    ::madvise(const_cast<uint8_t*>(data_) + at, std::min(kPiece, end - at),
              MADV_WILLNEED);
  }
}

absl::Status MappedFile::ReadAt(uint64_t offset, uint64_t length,
                                void* dst) const {
  auto* out = static_cast<uint8_t*>(dst);
  while (length > 0) {
    const ssize_t n = ::pread(fd_, out, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("cannot read ", path_));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(
          path_,
          " is shorter than when it was opened (changed while being "
          "read)"));
    }
    out += n;
    offset += static_cast<uint64_t>(n);
    length -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

void MappedFile::Populate(uint64_t offset, uint64_t length) const {
#ifndef MADV_POPULATE_READ
  constexpr int MADV_POPULATE_READ = 22;  // Linux 5.14
#endif
  if (data_ == nullptr || length == 0) return;
  const uint64_t page = PageSize();
  const uint64_t begin = offset / page * page;
  const uint64_t end = std::min(offset + length, size_);
  if (end <= begin) return;
  // A truncated file makes this fail (EFAULT) rather than raise SIGBUS; the
  // read that follows then meets the guard, which names the file.
  ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin,
            MADV_POPULATE_READ);
}

}  // namespace mergeserve
