// Large scratch memory (staging windows, cached merged updates) mapped with
// transparent huge pages. First touch of anonymous memory costs a fault per
// page; with 4 KiB pages that is 174,000 faults for 680 MB (2.2 s on the
// benchmark VM), with 2 MiB pages 340 (0.1 s). The memory is returned to the
// kernel when the buffer is destroyed.
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

 private:
  void* data_ = nullptr;
  size_t size_ = 0;  // as asked
  size_t mapped_ = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_HUGE_BUFFER_H_
