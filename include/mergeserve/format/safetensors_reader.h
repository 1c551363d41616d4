// Zero-copy reader for the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header, then the tensors' bytes back to back.
//
// Open() validates everything the format requires and returns an error that
// names the file and the problem; a corrupt file never crashes the process.
#ifndef MERGESERVE_FORMAT_SAFETENSORS_READER_H_
#define MERGESERVE_FORMAT_SAFETENSORS_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/dtype.h"
#include "mergeserve/format/mapped_file.h"

namespace mergeserve {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // absolute byte offset in the file
  uint64_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// A view of one tensor's bytes inside a mapped file.
struct TensorView {
  const TensorInfo* info = nullptr;
  const uint8_t* data = nullptr;
  const MappedFile* file = nullptr;
  // Index of the element at data[0]: 0 for a mapped tensor, the window's
  // first element for a staged copy of one window (ForEachStagedChunk).
  int64_t first = 0;
};

class SafetensorsReader {
 public:
  // Largest header we accept (the reference implementation's limit).
  static constexpr uint64_t kMaxHeaderBytes = 100u << 20;

  static absl::StatusOr<std::unique_ptr<SafetensorsReader>> Open(
      const std::string& path);

  const std::string& path() const { return file_->path(); }
  // Tensors in name order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // nullptr if absent.
  const TensorInfo* Find(const std::string& name) const;
  TensorView View(const TensorInfo& info) const {
    return {&info, file_->data() + info.offset, file_.get()};
  }
  const MappedFile& file() const { return *file_; }

 private:
  SafetensorsReader() = default;
  std::unique_ptr<MappedFile> file_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_SAFETENSORS_READER_H_
