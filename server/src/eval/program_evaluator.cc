#include "mergeserve/eval/program_evaluator.h"

#include <torch/script.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "eval/program_util.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

struct ProgramEvaluator::Impl {
  torch::jit::Module module;
  at::Device device{at::kCPU};
};

ProgramEvaluator::ProgramEvaluator(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ProgramEvaluator::~ProgramEvaluator() = default;

absl::StatusOr<std::unique_ptr<ProgramEvaluator>> ProgramEvaluator::Create(
    const std::string& program_path, const std::string& device) {
  auto impl = std::make_unique<Impl>();
  MS_ASSIGN_OR_RETURN(impl->module, LoadProgram(program_path, device));
  impl->device = at::Device(device);
  return std::unique_ptr<ProgramEvaluator>(
      new ProgramEvaluator(std::move(impl)));
}

absl::StatusOr<std::vector<std::string>> ProgramEvaluator::LoadWeights(
    const ModelFolder& weights,
    const std::function<bool(const std::string&)>& filter) {
  return LoadWeightsInto(impl_->module, weights, filter);
}

absl::StatusOr<EvalResult> ProgramEvaluator::Evaluate(
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
      at::Tensor xb = data.inputs.slice(0, b, e).to(impl_->device);
      at::Tensor yb = data.labels.slice(0, b, e).to(impl_->device);
      at::Tensor logits = impl_->module.forward({xb}).toTensor().to(at::kFloat);
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

}  // namespace mergeserve
