// RegMean's statistics: the Gram matrix X_ᵀX / n of the input of every
// linear layer of a checkpoint's program, on a dataset. The layers are found
// without hooks from the model's author: a copy of the program's inlined
// TorchScript graph is rewritten so that the input of every aten::linear
// (and of every matmul/mm by a transposed parameter) whose weight is a
// parameter becomes an extra output, then run batch by batch.
#ifndef MERGESERVE_EVAL_GRAM_ESTIMATOR_H_
#define MERGESERVE_EVAL_GRAM_ESTIMATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

struct GramOptions {
  int64_t max_examples = 0;  // 0: all
  int64_t batch_size = 128;
  std::string device = "cpu";
  std::function<void(int64_t done, int64_t total)> progress;
};

struct GramResult {
  int64_t examples = 0;
  // The weights a Gram was written for, in graph order.
  std::vector<std::string> layers;
};

// The parameter names of the linear layers found in the program's graph.
absl::StatusOr<std::vector<std::string>> LinearLayersOf(
    const std::string& program_path);

// Writes, as a checkpoint folder at `out_dir`, one F32 [in, in] Gram per
// linear weight, named like the weight (ready to be a merge's `gram:`).
// `weights_dir`, when not empty, is loaded into the program first.
absl::StatusOr<GramResult> EstimateGrams(const std::string& program_path,
                                         const std::string& weights_dir,
                                         const std::string& dataset_path,
                                         const std::string& out_dir,
                                         const GramOptions& options);

}  // namespace mergeserve

#endif  // MERGESERVE_EVAL_GRAM_ESTIMATOR_H_
