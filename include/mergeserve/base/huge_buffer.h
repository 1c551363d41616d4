// Large scratch memory (staging windows, cached merged updates) mapped with
// transparent huge pages. First touch of anonymous memory costs a fault per
// page; with 4 KiB pages that is 174,000 faults for 680 MB (2.2 s on the
// benchmark VM), with 2 MiB pages 340 (0.1 s). Even then the kernel zeroes
// every fresh page; Uninitialized() buffers skip that by taking a mapping a
// destroyed buffer of the same size left in a small process-wide pool
// (kPoolBytes), which is how a sweep's points reuse each other's memory.
// Other mappings are returned to the kernel when the buffer is destroyed.
#ifndef MERGESERVE_BASE_HUGE_BUFFER_H_
#define MERGESERVE_BASE_HUGE_BUFFER_H_

#include <cstddef>

namespace mergeserve {

class HugeBuffer {
 public:
  HugeBuffer() = default;
  // Zero-filled; throws std::bad_alloc, as operator new does, when the
  // memory cannot be mapped.
  explicit HugeBuffer(size_t bytes);
  // Contents undefined (a pooled mapping, else a fresh zeroed one): for
  // buffers every byte of which is written before it is read.
  static HugeBuffer Uninitialized(size_t bytes);
  ~HugeBuffer();
  HugeBuffer(HugeBuffer&& other) noexcept;
  HugeBuffer& operator=(HugeBuffer&& other) noexcept;
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  // Bytes mapped: size() rounded up to whole huge pages (small pages for a
  // buffer under one huge page).
  size_t mapped() const { return mapped_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  // Idle huge-page mappings the pool may keep for reuse.
  static constexpr size_t kPoolBytes = size_t{1} << 30;
  // Bytes the pool holds now (tests, metrics).
  static size_t PooledBytes();
  // Returns every pooled mapping to the kernel.
  static void ReleasePool();

 private:
  void Release();

  void* data_ = nullptr;
  size_t size_ = 0;  // as asked
  size_t mapped_ = 0;
  // Made by Uninitialized(): goes back to the pool when destroyed. A
  // zero-filled buffer's memory is returned to the kernel.
  bool pooled_ = false;
};

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_HUGE_BUFFER_H_
