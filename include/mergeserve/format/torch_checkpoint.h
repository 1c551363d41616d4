// pytorch_model.bin checkpoints (torch.save's zip archive) read without
// running anything: a small pickle machine that knows only an allow-list of
// globals (the ordered dict, torch's storage types and
// torch._utils._rebuild_tensor_v2, as torch's weights_only and mergekit's
// LazyTorchUnpickler); any other global is refused, naming the file and the
// global. The tensors are converted once into a safetensors file, which the
// rest of the engine reads as usual.
#ifndef MERGESERVE_FORMAT_TORCH_CHECKPOINT_H_
#define MERGESERVE_FORMAT_TORCH_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {

// One tensor of a checkpoint as its pickle describes it.
struct PickledTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::string storage_key;     // data/<key> in the archive
  int64_t storage_offset = 0;  // in elements
  std::vector<int64_t> shape, stride;
};

// The state dict of a torch.save zip archive (`bytes`, read from `path`):
// DATA_LOSS naming the file for anything but a flat dict of tensors built
// from allow-listed globals, for a compressed or malformed archive, and for
// a tensor outside its storage.
absl::StatusOr<std::vector<PickledTensor>> ReadTorchArchive(
    const std::string& path, const uint8_t* bytes, uint64_t size);

// Converts the .bin files `files` (one checkpoint, maybe sharded) into one
// safetensors file `out_file` (written atomically). Tensors are copied one
// at a time; non-contiguous ones are gathered by their strides.
absl::Status ConvertTorchCheckpoint(const std::vector<std::string>& files,
                                    const std::string& out_dir);

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_TORCH_CHECKPOINT_H_
