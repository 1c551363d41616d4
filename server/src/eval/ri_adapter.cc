// RiAdapter on LibTorch, in its module (eval_aten.h).
#include <torch/optim/adamw.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/aten_util.h"
#include "eval/eval_aten.h"
#include "eval/program_util.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {
namespace {

// Points the parameter at `path` of `module` to `value`, so several
// programs can share one set of trainable tensors.
void ShareParameter(torch::jit::Module module, const std::string& path,
                    const at::Tensor& value) {
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    module = module.attr(parts[i]).toModule();
  }
  module.register_parameter(parts.back(), value, /*is_buffer=*/false);
}

// Mean over examples of KL(p ‖ q), from log-probabilities.
at::Tensor MeanKl(const at::Tensor& logp, const at::Tensor& logq) {
  return (logp.exp() * (logp - logq)).sum(1).mean();
}

struct RiState {
  RiOptions options;
  at::Device device{at::kCPU};
  std::vector<RiExpert> experts;
  std::vector<torch::jit::Module> programs;
  std::vector<std::unique_ptr<ModelFolder>> folders;
  std::unique_ptr<ModelFolder> base;
  std::vector<std::string> names;       // the trained tensors (in the base)
  std::vector<at::Tensor> shared;       // one leaf per name, in every program
  at::Tensor pool;                      // auxiliary inputs of all tasks
  std::vector<at::Tensor> expert_logp;  // p_i on the pool, expert i alone
  std::vector<at::Tensor> base_logp;    // p0_j: head j on the base backbone

  at::Tensor LogProbs(size_t j, const at::Tensor& x) {
    return programs[j].forward({x}).toTensor().to(at::kFloat).log_softmax(1);
  }
  // Sets the shared tensors to those of `folder` (base, expert or merged).
  absl::Status Assign(const ModelFolder& folder) {
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < names.size(); ++k) {
      const TensorInfo* t = folder.Find(names[k]);
      if (t == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", names[k], "' is missing from ", folder.path()));
      }
      if (t->shape != shared[k].sizes().vec()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "shape mismatch for tensor '", names[k], "' in ", folder.path()));
      }
      MS_ASSIGN_OR_RETURN(at::Tensor v,
                          LoadChecked(folder.View(*t), "cpu", folder.path()));
      shared[k].copy_(v);
    }
    return absl::OkStatus();
  }
  at::Tensor Loss(size_t i, const at::Tensor& idx) {
    const at::Tensor x = pool.index_select(0, idx);
    at::Tensor loss =
        MeanKl(expert_logp[i].index_select(0, idx), LogProbs(i, x));
    const double w =
        experts.size() > 1
            ? options.alpha / static_cast<double>(experts.size() - 1)
            : 0.0;
    for (size_t j = 0; j < experts.size(); ++j) {
      if (j == i) continue;
      loss =
          loss + w * MeanKl(base_logp[j].index_select(0, idx), LogProbs(j, x));
    }
    return loss;
  }
};

class TorchRiAdapter final : public RiAdapter {
 public:
  explicit TorchRiAdapter(std::unique_ptr<RiState> state)
      : impl_(std::move(state)) {}

  absl::StatusOr<RiAdaptation> Adapt(
      int expert, const std::string& out_dir,
      const std::function<void(int64_t step, int64_t steps)>& progress)
      override;
  absl::StatusOr<double> Interference(const std::string& merged_dir) override;
  int64_t pool_size() const override { return impl_->pool.size(0); }

 private:
  std::unique_ptr<RiState> impl_;
};

}  // namespace

namespace aten {
absl::StatusOr<std::unique_ptr<RiAdapter>> CreateRiAdapter(
    const std::string& base_dir, const std::vector<RiExpert>& experts,
    const RiOptions& options) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("ri: no experts to adapt");
  }
  if (options.steps < 0 || !(options.lr > 0) || options.batch_size <= 0 ||
      !(options.alpha >= 0) || !(options.weight_decay >= 0)) {
    return absl::InvalidArgumentError(
        "ri: steps >= 0, lr > 0, batch_size > 0, alpha >= 0 and "
        "weight_decay >= 0 are required");
  }
  auto impl = std::make_unique<RiState>();
  impl->options = options;
  impl->experts = experts;
  MS_ASSIGN_OR_RETURN(impl->base, ModelFolder::Open(base_dir));
  std::vector<at::Tensor> pools;
  for (const RiExpert& e : experts) {
    MS_ASSIGN_OR_RETURN(torch::jit::Module m,
                        LoadProgram(e.program, options.device));
    MS_ASSIGN_OR_RETURN(auto folder, ModelFolder::Open(e.weights_dir));
    MS_RETURN_IF_ERROR(LoadWeightsInto(m, *folder).status());
    impl->programs.push_back(m);
    impl->folders.push_back(std::move(folder));
    MS_ASSIGN_OR_RETURN(DatasetTensors d, ReadDataset(e.aux_data, false));
    pools.push_back(d.inputs);
  }
  absl::Status status = CatchAten("ri setup", [&]() -> absl::Status {
    impl->device = at::Device(options.device);
    impl->pool = at::cat(pools).to(impl->device);
    torch::NoGradGuard no_grad;
    for (size_t j = 0; j < experts.size(); ++j) {
      for (auto& p : ParametersByName(impl->programs[j])) {
        p.second.set_requires_grad(false);  // heads stay frozen
      }
      impl->expert_logp.push_back(impl->LogProbs(j, impl->pool));
    }
    // The trained tensors: the program parameters the base has.
    for (const auto& [name, value] : ParametersByName(impl->programs[0])) {
      if (impl->base->Find(name) == nullptr) continue;
      impl->names.push_back(name);
      impl->shared.push_back(value.detach().clone());
    }
    if (impl->names.empty()) {
      return absl::InvalidArgumentError(
          "ri: no program parameter is a tensor of the base model");
    }
    for (size_t j = 0; j < experts.size(); ++j) {
      for (size_t k = 0; k < impl->names.size(); ++k) {
        ShareParameter(impl->programs[j], impl->names[k], impl->shared[k]);
      }
    }
    MS_RETURN_IF_ERROR(impl->Assign(*impl->base));
    for (size_t j = 0; j < experts.size(); ++j) {
      impl->base_logp.push_back(impl->LogProbs(j, impl->pool));
    }
    return absl::OkStatus();
  });
  MS_RETURN_IF_ERROR(status);
  return std::unique_ptr<RiAdapter>(new TorchRiAdapter(std::move(impl)));
}
}  // namespace aten

absl::StatusOr<RiAdaptation> TorchRiAdapter::Adapt(
    int expert, const std::string& out_dir,
    const std::function<void(int64_t, int64_t)>& progress) {
  RiState& s = *impl_;
  if (expert < 0 || expert >= static_cast<int>(s.experts.size())) {
    return absl::OutOfRangeError("ri: no such expert");
  }
  const size_t i = static_cast<size_t>(expert);
  MS_RETURN_IF_ERROR(s.Assign(*s.folders[i]));
  RiAdaptation result;
  absl::Status status = CatchAten("ri adaptation", [&]() -> absl::Status {
    for (auto& t : s.shared) t.set_requires_grad(true);
    torch::optim::AdamW opt(s.shared,
                            torch::optim::AdamWOptions(s.options.lr)
                                .weight_decay(s.options.weight_decay));
    at::Generator gen = at::detail::createCPUGenerator(s.options.seed + i);
    const int64_t n = s.pool.size(0);
    const int64_t b = std::min(n, s.options.batch_size);
    {
      torch::NoGradGuard no_grad;
      result.loss_before =
          s.Loss(i, at::arange(n, at::TensorOptions().device(s.device)))
              .item<double>();
    }
    for (int64_t step = 0; step < s.options.steps; ++step) {
      const at::Tensor idx =
          at::randperm(n, gen, at::TensorOptions().dtype(at::kLong))
              .slice(0, 0, b)
              .to(s.device);
      opt.zero_grad();
      at::Tensor loss = s.Loss(i, idx);
      loss.backward();
      opt.step();
      if (progress) progress(step + 1, s.options.steps);
    }
    for (auto& t : s.shared) t.set_requires_grad(false);
    torch::NoGradGuard no_grad;
    result.loss_after =
        s.Loss(i, at::arange(n, at::TensorOptions().device(s.device)))
            .item<double>();
    return absl::OkStatus();
  });
  MS_RETURN_IF_ERROR(status);

  // θ0+τ'_i: the expert's checkpoint with the trained tensors replaced.
  const ModelFolder& src = *s.folders[i];
  std::map<std::string, size_t> trained;
  for (size_t k = 0; k < s.names.size(); ++k) trained[s.names[k]] = k;
  std::vector<TensorSpec> specs;
  for (const TensorInfo* t : src.tensors()) {
    specs.push_back(
        {t->name, trained.count(t->name) ? DType::kF32 : t->dtype, t->shape});
  }
  ShardedWriter::Options wo;
  wo.output_dir = out_dir;
  wo.overwrite = true;
  MS_ASSIGN_OR_RETURN(auto writer, ShardedWriter::Create(wo, specs));
  for (size_t k = 0; k < specs.size(); ++k) {
    auto it = trained.find(specs[k].name);
    if (it == trained.end()) {
      const TensorView v = src.View(*src.Find(specs[k].name));
      MS_RETURN_IF_ERROR(writer->Write(k, 0, v.data, v.info->nbytes));
      continue;
    }
    const at::Tensor t = s.shared[it->second].cpu().contiguous();
    MS_RETURN_IF_ERROR(writer->Write(k, 0, t.data_ptr<float>(),
                                     static_cast<uint64_t>(t.numel()) * 4));
  }
  MS_RETURN_IF_ERROR(writer->Commit());
  return result;
}

absl::StatusOr<double> TorchRiAdapter::Interference(
    const std::string& merged_dir) {
  RiState& s = *impl_;
  MS_ASSIGN_OR_RETURN(auto merged, ModelFolder::Open(merged_dir));
  MS_RETURN_IF_ERROR(s.Assign(*merged));
  double xi = 0;
  MS_RETURN_IF_ERROR(CatchAten("interference", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < s.experts.size(); ++i) {
      xi += MeanKl(s.expert_logp[i], s.LogProbs(i, s.pool)).item<double>();
    }
    return absl::OkStatus();
  }));
  return xi;
}

}  // namespace mergeserve
