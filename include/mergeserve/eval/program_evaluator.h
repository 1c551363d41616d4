// Runs a checkpoint's program (a TorchScript module mapping inputs to
// logits, with parameter names equal to the checkpoint's tensor names) on a
// dataset: accuracy and mean cross-entropy. Weights of another checkpoint
// (e.g. a merged backbone) can be loaded into it by name first.
#ifndef MERGESERVE_EVAL_PROGRAM_EVALUATOR_H_
#define MERGESERVE_EVAL_PROGRAM_EVALUATOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {

struct EvalResult {
  int64_t examples = 0;
  double accuracy = 0;
  double mean_cross_entropy = 0;
};

class ProgramEvaluator {
 public:
  // device: "cpu", "cuda", "cuda:N". Runs on LibTorch, whose module the
  // binaries load on first use (FAILED_PRECONDITION if it cannot be).
  static absl::StatusOr<std::unique_ptr<ProgramEvaluator>> Create(
      const std::string& program_path, const std::string& device = "cpu");
  virtual ~ProgramEvaluator();

  // Copies every tensor of `weights` whose name is a parameter of the
  // program (and passes `filter`, when given) into it; shapes must match.
  // Returns the names replaced.
  virtual absl::StatusOr<std::vector<std::string>> LoadWeights(
      const ModelFolder& weights,
      const std::function<bool(const std::string&)>& filter = {}) = 0;
  // Evaluates on a safetensors dataset with `inputs` (float or integer ids)
  // and `labels` (integers).
  // `max_examples` > 0 evaluates only the first examples.
  virtual absl::StatusOr<EvalResult> Evaluate(
      const std::string& dataset_path, int64_t batch_size = 256,
      const std::function<void(int64_t done, int64_t total)>& progress = {},
      int64_t max_examples = 0) = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_EVAL_PROGRAM_EVALUATOR_H_
