// A read-only memory map of a whole file (RAII).
#ifndef MERGESERVE_FORMAT_MAPPED_FILE_H_
#define MERGESERVE_FORMAT_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(
      const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

  // Drops the pages of [offset, offset+length) from this process's resident
  // set (they stay in the page cache), so streaming a model through the map
  // keeps RSS bounded by what is in flight rather than the file size.
  void Release(uint64_t offset, uint64_t length) const;
  // Asks the kernel to read ahead [offset, offset+length).
  void Prefetch(uint64_t offset, uint64_t length) const;

 private:
  MappedFile(std::string path, const uint8_t* data, uint64_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  uint64_t size_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_MAPPED_FILE_H_
