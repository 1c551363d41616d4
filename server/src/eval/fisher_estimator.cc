#include "mergeserve/eval/fisher_estimator.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/format/safetensors_reader.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {

absl::StatusOr<FisherMode> FisherModeFromName(const std::string& name) {
  if (name == "exact") return FisherMode::kExact;
  if (name == "sampled") return FisherMode::kSampled;
  if (name == "empirical") return FisherMode::kEmpirical;
  return absl::InvalidArgumentError(absl::StrCat(
      "fisher_mode must be exact, sampled or empirical, got '", name, "'"));
}

absl::StatusOr<int64_t> EstimateFisher(const std::string& program_path,
                                       const std::string& weights_dir,
                                       const std::string& dataset_path,
                                       const std::string& out_dir,
                                       const FisherOptions& options) {
  MS_ASSIGN_OR_RETURN(auto data, SafetensorsReader::Open(dataset_path));
  const TensorInfo* inputs = data->Find("inputs");
  const TensorInfo* labels = data->Find("labels");
  if (inputs == nullptr || inputs->dtype != DType::kF32 ||
      inputs->shape.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", dataset_path, " needs F32 'inputs'"));
  }
  if (options.mode == FisherMode::kEmpirical &&
      (labels == nullptr || labels->dtype != DType::kI64)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the empirical Fisher needs I64 'labels' in ", dataset_path));
  }
  std::unique_ptr<ModelFolder> weights;
  if (!weights_dir.empty()) {
    MS_ASSIGN_OR_RETURN(weights, ModelFolder::Open(weights_dir));
  }

  std::vector<std::string> names;
  std::vector<TensorSpec> specs;
  std::vector<at::Tensor> sums;
  int64_t n = inputs->shape[0];
  if (options.max_examples > 0) n = std::min(n, options.max_examples);
  try {
    const at::Device device(options.device);
    torch::jit::Module module = torch::jit::load(program_path, device);
    module.eval();
    std::vector<at::Tensor> params;
    for (const auto& p : module.named_parameters(/*recurse=*/true)) {
      if (weights != nullptr) {
        if (const TensorInfo* t = weights->Find(p.name)) {
          std::vector<float> v(static_cast<size_t>(t->numel()));
          LoadAsF32(t->dtype, weights->View(*t).data, t->numel(), v.data());
          torch::NoGradGuard no_grad;
          p.value.copy_(at::from_blob(v.data(), t->shape, at::kFloat));
        }
      }
      p.value.set_requires_grad(true);
      names.push_back(p.name);
      params.push_back(p.value);
      sums.push_back(at::zeros_like(p.value, at::kDouble));
      specs.push_back({p.name, DType::kF32, p.value.sizes().vec()});
    }
    const int64_t width = inputs->numel() / inputs->shape[0];
    const auto* x_all =
        reinterpret_cast<const float*>(data->View(*inputs).data);
    const int64_t* y_all =
        labels ? reinterpret_cast<const int64_t*>(data->View(*labels).data)
               : nullptr;
    at::Generator gen = at::detail::createCPUGenerator(options.seed);
    std::vector<int64_t> shape = inputs->shape;
    shape[0] = 1;
    for (int64_t i = 0; i < n; ++i) {
      at::Tensor x = at::from_blob(const_cast<float*>(x_all + i * width), shape,
                                   at::kFloat)
                         .to(device);
      at::Tensor logp = module.forward({x}).toTensor().log_softmax(1)[0];
      const at::Tensor p = logp.exp().detach().cpu();
      std::vector<std::pair<int64_t, double>> targets;  // (class, weight)
      if (options.mode == FisherMode::kExact) {
        for (int64_t c = 0; c < p.size(0); ++c)
          targets.push_back({c, p[c].item<double>()});
      } else if (options.mode == FisherMode::kSampled) {
        targets.push_back(
            {at::multinomial(p, 1, false, gen).item<int64_t>(), 1.0});
      } else {
        targets.push_back({y_all[i], 1.0});
      }
      for (size_t t = 0; t < targets.size(); ++t) {
        // Per-example gradient of log p(y|x): never of a batch sum.
        auto grads =
            torch::autograd::grad({logp[targets[t].first]}, params, {},
                                  /*retain_graph=*/t + 1 < targets.size());
        for (size_t k = 0; k < grads.size(); ++k) {
          sums[k] += grads[k].to(at::kDouble).square() * targets[t].second;
        }
      }
      if (options.progress) options.progress(i + 1, n);
    }
  } catch (const std::exception& e) {
    std::string msg = e.what();
    return absl::InvalidArgumentError(absl::StrCat(
        "Fisher of ", program_path, ": ", msg.substr(0, msg.find('\n'))));
  }
  ShardedWriter::Options wo;
  wo.output_dir = out_dir;
  wo.overwrite = true;
  MS_ASSIGN_OR_RETURN(auto writer, ShardedWriter::Create(wo, specs));
  for (size_t k = 0; k < sums.size(); ++k) {
    const at::Tensor f =
        (sums[k] / static_cast<double>(n)).to(at::kFloat).contiguous();
    MS_RETURN_IF_ERROR(writer->Write(k, 0, f.data_ptr<float>(),
                                     static_cast<uint64_t>(f.numel()) * 4));
  }
  MS_RETURN_IF_ERROR(writer->Commit());
  return n;
}

}  // namespace mergeserve
