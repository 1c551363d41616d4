// The diagonal Fisher of a checkpoint's program on its task data, computed
// the way Matena & Raffel do: per-example gradients of log p(y|x), squared,
// averaged over examples. Modes:
//   exact      Σ_y p(y|x) (∂ log p(y|x)/∂θ)²  (expectation over the model)
//   sampled    one y ~ p(·|x) per example (seeded)
//   empirical  the true label
#ifndef MERGESERVE_EVAL_FISHER_ESTIMATOR_H_
#define MERGESERVE_EVAL_FISHER_ESTIMATOR_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

enum class FisherMode { kExact, kSampled, kEmpirical };
absl::StatusOr<FisherMode> FisherModeFromName(const std::string& name);

struct FisherOptions {
  FisherMode mode = FisherMode::kExact;
  int64_t max_examples = 0;  // 0: all
  uint64_t seed = 0;         // for kSampled
  std::string device = "cpu";
  std::function<void(int64_t done, int64_t total)> progress;
};

// Writes the Fisher of every parameter of `program_path` (with `weights`
// loaded when not empty) on `dataset_path` as a checkpoint folder at
// `out_dir` (same tensor names, F32), ready to be a merge's `fisher:`.
// Returns the number of examples used.
absl::StatusOr<int64_t> EstimateFisher(const std::string& program_path,
                                       const std::string& weights_dir,
                                       const std::string& dataset_path,
                                       const std::string& out_dir,
                                       const FisherOptions& options);

}  // namespace mergeserve

#endif  // MERGESERVE_EVAL_FISHER_ESTIMATOR_H_
