// A read-only memory map of a whole file (RAII), guarded against the file
// changing underneath it.
//
// A file that is truncated while mapped makes reads of its lost pages raise
// SIGBUS, which would kill the whole server for one request's input (a
// checkpoint re-saved in place on a shared models volume). Every mapping is
// registered with a process-wide SIGBUS handler that maps a zero page over
// the faulting page and marks the mapping; the reader then finishes its
// chunk on zeros and CheckUnchanged() reports DATA_LOSS naming the file.
// The same check compares size and mtime with what they were at open, so
// an in-place rewrite that keeps the size is caught too.
#ifndef MERGESERVE_FORMAT_MAPPED_FILE_H_
#define MERGESERVE_FORMAT_MAPPED_FILE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

// The real path (symlinks resolved) of the file open as `fd`, read back
// from /proc/self/fd, so a link swapped after opening cannot mislead a
// check; `fallback` when it cannot be read.
std::string RealPathOfFd(int fd, const std::string& fallback);

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
  // The file actually mapped, with symlinks resolved (/proc/self/fd).
  const std::string& real_path() const { return real_path_; }

  // Drops the pages of [offset, offset+length) from this process's resident
  // set (they stay in the page cache), so streaming a model through the map
  // keeps RSS bounded by what is in flight rather than the file size.
  void Release(uint64_t offset, uint64_t length) const;
  // Asks the kernel to read ahead [offset, offset+length).
  void Prefetch(uint64_t offset, uint64_t length) const;
  // Maps the pages of [offset, offset+length) into this process in one call
  // (MADV_POPULATE_READ), instead of one page fault per few pages as the
  // merge reads them; a no-op where the kernel lacks it (before 5.14).
  void Populate(uint64_t offset, uint64_t length) const;

  // Copies [offset, offset+length) into dst with pread, without mapping the
  // pages into this process. DATA_LOSS naming the file if it is shorter now.
  absl::Status ReadAt(uint64_t offset, uint64_t length, void* dst) const;

  // DATA_LOSS naming the file when a read hit a truncated page, or when the
  // file's size or modification time differ from when it was opened.
  absl::Status CheckUnchanged() const;

 private:
  MappedFile() = default;
  std::string path_;
  std::string real_path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
  int slot_ = -1;  // in the SIGBUS guard's table; -1: not guarded
  int64_t mtime_ns_ = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_MAPPED_FILE_H_
