// ProgramEvaluator on LibTorch, in its module (eval_aten.h).
#include <torch/script.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "eval/eval_aten.h"
#include "eval/program_util.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

namespace {

class TorchProgramEvaluator final : public ProgramEvaluator {
 public:
  TorchProgramEvaluator(torch::jit::Module module, at::Device device)
      : module_(std::move(module)), device_(device) {}

  absl::StatusOr<std::vector<std::string>> LoadWeights(
      const ModelFolder& weights,
      const std::function<bool(const std::string&)>& filter) override {
    return LoadWeightsInto(module_, weights, filter);
  }
  absl::StatusOr<EvalResult> Evaluate(
      const std::string& dataset_path, int64_t batch_size,
      const std::function<void(int64_t, int64_t)>& progress,
      int64_t max_examples) override;

 private:
  torch::jit::Module module_;
  at::Device device_;
};

absl::StatusOr<EvalResult> TorchProgramEvaluator::Evaluate(
    const std::string& dataset_path, int64_t batch_size,
    const std::function<void(int64_t, int64_t)>& progress,
    int64_t max_examples) {
  MS_ASSIGN_OR_RETURN(DatasetTensors data,
                      ReadDataset(dataset_path, /*need_labels=*/true));
  if (batch_size <= 0) batch_size = 256;
  EvalResult result;
  int64_t n = data.size();
  if (max_examples > 0) n = std::min(n, max_examples);
  double ce_sum = 0;
  int64_t correct = 0;
  absl::Status status = CatchAten("evaluating", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (int64_t b = 0; b < n; b += batch_size) {
      const int64_t e = std::min(n, b + batch_size);
      at::Tensor xb = data.inputs.slice(0, b, e).to(device_);
      at::Tensor yb = data.labels.slice(0, b, e).to(device_);
      at::Tensor logits = module_.forward({xb}).toTensor().to(at::kFloat);
      at::Tensor logp = logits.log_softmax(1);
      ce_sum -= logp.gather(1, yb.unsqueeze(1)).sum().item<double>();
      correct += (logits.argmax(1) == yb).sum().item<int64_t>();
      if (progress) progress(e, n);
    }
    return absl::OkStatus();
  });
  MS_RETURN_IF_ERROR(status);
  result.examples = n;
  result.accuracy = n ? static_cast<double>(correct) / n : 0;
  result.mean_cross_entropy = n ? ce_sum / n : 0;
  return result;
}

}  // namespace

namespace aten {
absl::StatusOr<std::unique_ptr<ProgramEvaluator>> CreateProgramEvaluator(
    const std::string& program_path, const std::string& device) {
  MS_ASSIGN_OR_RETURN(torch::jit::Module module,
                      LoadProgram(program_path, device));
  return std::unique_ptr<ProgramEvaluator>(
      new TorchProgramEvaluator(std::move(module), at::Device(device)));
}
}  // namespace aten

}  // namespace mergeserve
