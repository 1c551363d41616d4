#include "mergeserve/eval/program_evaluator.h"

#include <torch/script.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_reader.h"

namespace mergeserve {

struct ProgramEvaluator::Impl {
  torch::jit::Module module;
  at::Device device{at::kCPU};
  std::string path;
};

ProgramEvaluator::ProgramEvaluator(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ProgramEvaluator::~ProgramEvaluator() = default;

absl::StatusOr<std::unique_ptr<ProgramEvaluator>> ProgramEvaluator::Create(
    const std::string& program_path, const std::string& device) {
  auto impl = std::make_unique<Impl>();
  impl->path = program_path;
  try {
    impl->device = at::Device(device);
    impl->module = torch::jit::load(program_path, impl->device);
    impl->module.eval();
  } catch (const std::exception& e) {
    std::string msg = e.what();
    msg = msg.substr(0, msg.find('\n'));
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load program ", program_path, ": ", msg));
  }
  return std::unique_ptr<ProgramEvaluator>(
      new ProgramEvaluator(std::move(impl)));
}

absl::StatusOr<std::vector<std::string>> ProgramEvaluator::LoadWeights(
    const ModelFolder& weights) {
  std::vector<std::string> replaced;
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> params;
  for (const auto& p : impl_->module.named_parameters(/*recurse=*/true)) {
    params[p.name] = p.value;
  }
  for (const TensorInfo* t : weights.tensors()) {
    auto it = params.find(t->name);
    if (it == params.end()) continue;
    if (it->second.sizes().vec() != t->shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t->name, "' of ", weights.path(),
                       " does not fit the program's parameter of that name"));
    }
    MS_ASSIGN_OR_RETURN(at::Tensor value,
                        LoadChecked(weights.View(*t), "cpu", weights.path()));
    MS_RETURN_IF_ERROR(CatchAten("loading weights", [&]() -> absl::Status {
      it->second.copy_(value.to(it->second.scalar_type()));
      return absl::OkStatus();
    }));
    replaced.push_back(t->name);
  }
  return replaced;
}

absl::StatusOr<EvalResult> ProgramEvaluator::Evaluate(
    const std::string& dataset_path, int64_t batch_size,
    const std::function<void(int64_t, int64_t)>& progress) {
  MS_ASSIGN_OR_RETURN(auto data, SafetensorsReader::Open(dataset_path));
  const TensorInfo* inputs = data->Find("inputs");
  const TensorInfo* labels = data->Find("labels");
  if (inputs == nullptr || labels == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset ", dataset_path, " needs 'inputs' and 'labels' tensors"));
  }
  if (inputs->shape.empty() || labels->shape.size() != 1 ||
      labels->shape[0] != inputs->shape[0] ||
      (labels->dtype != DType::kI64 && labels->dtype != DType::kI32)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", dataset_path,
                     ": labels must be one integer per example of inputs"));
  }
  if (batch_size <= 0) batch_size = 256;
  EvalResult result;
  const int64_t n = inputs->shape[0];
  double ce_sum = 0;
  int64_t correct = 0;
  absl::Status status = CatchAten("evaluating", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    const bool float_inputs = IsMergeable(inputs->dtype);
    at::Tensor x;
    if (float_inputs) {
      MS_ASSIGN_OR_RETURN(x, ViewToF32(data->View(*inputs), "cpu"));
    } else {
      x = at::from_blob(
              const_cast<uint8_t*>(data->View(*inputs).data), inputs->shape,
              at::TensorOptions().dtype(
                  inputs->dtype == DType::kI32 ? at::kInt : at::kLong))
              .clone();
    }
    at::Tensor y =
        at::from_blob(
            const_cast<uint8_t*>(data->View(*labels).data), labels->shape,
            at::TensorOptions().dtype(labels->dtype == DType::kI32 ? at::kInt
                                                                   : at::kLong))
            .to(at::kLong);
    for (int64_t b = 0; b < n; b += batch_size) {
      const int64_t e = std::min(n, b + batch_size);
      at::Tensor xb = x.slice(0, b, e).to(impl_->device);
      at::Tensor yb = y.slice(0, b, e).to(impl_->device);
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
