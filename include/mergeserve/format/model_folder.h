// A Hugging Face model folder: one model.safetensors, or shards listed in
// model.safetensors.index.json. Tensors are looked up by name across shards.
#ifndef MERGESERVE_FORMAT_MODEL_FOLDER_H_
#define MERGESERVE_FORMAT_MODEL_FOLDER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/safetensors_reader.h"

namespace mergeserve {

// Files of an HF folder that travel with the weights (config, tokenizer).
const std::vector<std::string>& ModelSideFiles();
// A weight file (*.safetensors, the index) or a side file; a plain name.
bool IsModelFile(const std::string& name);

// Whether JSON `text` nests arrays and objects at most `max_depth` deep
// (a scan of the text; strings are skipped).
bool JsonNestingWithin(std::string_view text, int max_depth);

// Vets the real path (symlinks resolved, read back from the opened file
// descriptor, so a link swapped after a check cannot escape it) of every
// file a folder opens; an error refuses the file.
using FileCheck = std::function<absl::Status(const std::string& real_path)>;

class ModelFolder {
 public:
  // path is a folder (model.safetensors, an index, or a single *.safetensors
  // file inside) or a .safetensors file. `check` (optional) vets every file
  // opened, now and by ReadSideFile.
  static absl::StatusOr<std::unique_ptr<ModelFolder>> Open(
      const std::string& path, FileCheck check = nullptr);
  // Removes the safetensors file a .bin checkpoint was converted into.
  ~ModelFolder();

  const std::string& path() const { return path_; }
  // All tensors, in name order.
  const std::vector<const TensorInfo*>& tensors() const { return tensors_; }
  // nullptr if absent.
  const TensorInfo* Find(const std::string& name) const;
  TensorView View(const TensorInfo& info) const;
  const std::vector<std::unique_ptr<SafetensorsReader>>& shards() const {
    return shards_;
  }
  uint64_t total_bytes() const;

  // DATA_LOSS naming the file when a weight file was truncated or modified
  // since it was opened (see MappedFile::CheckUnchanged).
  absl::Status CheckUnchanged() const;
  // A side file of the folder (config.json, tokenizer files; at most
  // `max_bytes`), vetted like the weights. NOT_FOUND when absent.
  absl::StatusOr<std::string> ReadSideFile(const std::string& name,
                                           size_t max_bytes = 64 << 20) const;

 private:
  ModelFolder() = default;
  absl::Status AddShard(const std::string& file);
  // A folder with pytorch_model.bin (or its index) and no safetensors: the
  // tensors are read without running the pickle and converted once into a
  // private safetensors file (see format/torch_checkpoint.h).
  absl::Status ConvertTorchFiles(const std::string& dir);
  std::string converted_dir_;

  std::string path_;
  FileCheck check_;
  std::vector<std::unique_ptr<SafetensorsReader>> shards_;
  std::vector<const TensorInfo*> tensors_;
  // name -> (shard index, tensor)
  std::map<std::string, std::pair<size_t, const TensorInfo*>> index_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_MODEL_FOLDER_H_
