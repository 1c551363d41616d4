// Shared by the estimators and the evaluator: loading a checkpoint's
// TorchScript program, copying weights into it by name, and reading a
// dataset's inputs. Includes LibTorch's JIT headers: only eval/*.cc use it.
#ifndef MERGESERVE_EVAL_PROGRAM_UTIL_H_
#define MERGESERVE_EVAL_PROGRAM_UTIL_H_

#include <torch/script.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {

absl::StatusOr<torch::jit::Module> LoadProgram(const std::string& path,
                                               const std::string& device);

// Copies every tensor of `weights` that is a parameter of `module` into it
// (shapes must match); returns the names replaced.
absl::StatusOr<std::vector<std::string>> LoadWeightsInto(
    torch::jit::Module& module, const ModelFolder& weights,
    const std::function<bool(const std::string&)>& filter = {});

// The parameters of `module` by name (aliases, not copies).
std::map<std::string, at::Tensor> ParametersByName(
    const torch::jit::Module& module);

struct DatasetTensors {
  at::Tensor inputs;  // float32, or int64 token ids
  at::Tensor labels;  // int64, undefined when the dataset has none
  int64_t size() const { return inputs.size(0); }
};
// Reads `inputs` (and `labels` when present) of a safetensors dataset.
absl::StatusOr<DatasetTensors> ReadDataset(const std::string& path,
                                           bool need_labels);

// The first line of an exception's message (LibTorch's carry stack traces).
std::string FirstLine(const std::exception& e);

}  // namespace mergeserve

#endif  // MERGESERVE_EVAL_PROGRAM_UTIL_H_
