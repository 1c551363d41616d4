// EstimateFisher on LibTorch, in its module (eval_aten.h).
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "eval/eval_aten.h"
#include "eval/program_util.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {

namespace aten {

absl::StatusOr<int64_t> EstimateFisher(const std::string& program_path,
                                       const std::string& weights_dir,
                                       const std::string& dataset_path,
                                       const std::string& out_dir,
                                       const FisherOptions& options) {
  const bool need_labels = options.mode == FisherMode::kEmpirical;
  MS_ASSIGN_OR_RETURN(DatasetTensors data,
                      ReadDataset(dataset_path, need_labels));
  MS_ASSIGN_OR_RETURN(torch::jit::Module module,
                      LoadProgram(program_path, options.device));
  if (!weights_dir.empty()) {
    MS_ASSIGN_OR_RETURN(auto weights, ModelFolder::Open(weights_dir));
    MS_RETURN_IF_ERROR(LoadWeightsInto(module, *weights).status());
  }
  std::vector<TensorSpec> specs;
  std::vector<at::Tensor> sums;
  int64_t n = data.size();
  if (options.max_examples > 0) n = std::min(n, options.max_examples);
  try {
    const at::Device device(options.device);
    std::vector<at::Tensor> params;
    for (const auto& p : module.named_parameters(/*recurse=*/true)) {
      p.value.set_requires_grad(true);
      params.push_back(p.value);
      sums.push_back(at::zeros_like(p.value, at::kDouble));
      specs.push_back({p.name, DType::kF32, p.value.sizes().vec()});
    }
    at::Generator gen = at::detail::createCPUGenerator(options.seed);
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor x = data.inputs.slice(0, i, i + 1).to(device);
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
        targets.push_back({data.labels[i].item<int64_t>(), 1.0});
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
    return absl::InvalidArgumentError(
        absl::StrCat("Fisher of ", program_path, ": ", FirstLine(e)));
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

}  // namespace aten
}  // namespace mergeserve
