// Writes a sharded Hugging Face model folder.
//
// The tensor list is known up front, so every header and byte offset is fixed
// at Create(): tensors may then be written in any order and from many threads
// (positioned writes), which lets the engine stream results straight to disk.
// Everything goes to a temporary sibling folder that Commit() renames into
// place; if the writer is destroyed uncommitted the temporary folder is
// removed, so a half-written model never appears under the final name.
#ifndef MERGESERVE_FORMAT_SAFETENSORS_WRITER_H_
#define MERGESERVE_FORMAT_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

class ShardedWriter {
 public:
  struct Options {
    std::string output_dir;
    // A new shard starts when the next tensor would push a shard past this.
    uint64_t max_shard_bytes = 5ull << 30;
    // Replace an existing non-empty output_dir at Commit().
    bool overwrite = false;
    std::map<std::string, std::string> metadata = {{"format", "pt"}};
    // Reserve each shard's blocks up front (a full disk fails before any
    // work); false leaves a sparse file, for outputs never written.
    bool reserve = true;
  };

  static absl::StatusOr<std::unique_ptr<ShardedWriter>> Create(
      Options options, std::vector<TensorSpec> tensors);
  ~ShardedWriter();
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int num_shards() const { return static_cast<int>(shards_.size()); }

  // Writes bytes [offset, offset+size) of tensor `index`. Thread-safe for
  // disjoint ranges.
  absl::Status Write(size_t index, uint64_t offset, const void* data,
                     uint64_t size);
  // Adds a small file (config.json, tokenizer files) to the output folder.
  absl::Status AddFile(const std::string& name, const std::string& contents);
  // Syncs, writes the index (when sharded) and atomically moves the folder
  // into place.
  absl::Status Commit();

  const std::string& temp_dir() const { return temp_dir_; }

 private:
  struct Shard {
    std::string file_name;
    int fd = -1;
    uint64_t data_start = 0;  // 8 + header length
    uint64_t size = 0;
  };
  struct Placement {
    size_t shard;
    uint64_t offset;  // absolute in the shard file
  };
  ShardedWriter() = default;

  Options options_;
  std::vector<TensorSpec> tensors_;
  std::vector<Shard> shards_;
  std::vector<Placement> placement_;
  std::string temp_dir_;
  bool committed_ = false;
};

// Parent-relative temporary names start with this, so tools can ignore them.
constexpr char kTempSuffix[] = ".mergeserve-tmp-";

// A writer of one model.safetensors in `output_dir` (replaced at Commit):
// for converted inputs (.bin checkpoints, models with a LoRA merged in).
absl::StatusOr<std::unique_ptr<ShardedWriter>> SingleFileWriter(
    const std::string& output_dir, std::vector<TensorSpec> tensors);

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_SAFETENSORS_WRITER_H_
