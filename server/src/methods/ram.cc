// ram and ramplus_tl (Reinforced Agent Merging, mergekit's ram.py): per
// entry, the task vectors larger than ε in magnitude count as
// contributing; an entry only one model contributes to keeps its value,
// entries several contribute to are averaged over the contributors.
// ramplus_tl scales each model's unique entries by
// 1 + r·clamp(shared/unique, 0, α), its counts taken over the tensor.
// The spec has no section on them; this follows mergekit a6e4028 (weights
// are not used there either).
#include <ATen/ATen.h>

#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class RamMethod : public MergeMethod {
 public:
  explicit RamMethod(bool plus) : plus_(plus) {}

  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    const char* name = plus_ ? "ramplus_tl" : "ram";
    if (plan.base() == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " needs a base_model"));
    }
    models_ = NonBaseModels(plan);
    MS_ASSIGN_OR_RETURN(epsilon_, plan.GlobalNumber("epsilon", 1e-5));
    MS_ASSIGN_OR_RETURN(r_, plan.GlobalNumber("r", 0.1));
    MS_ASSIGN_OR_RETURN(alpha_, plan.GlobalNumber("alpha", 0.2));
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    MS_ASSIGN_OR_RETURN(at::Tensor base, LoadF64(plan, t, -1, ctx));
    if (models_.empty()) return WriteToSink(base, out);
    std::vector<at::Tensor> taus;
    for (int m : models_) {
      MS_ASSIGN_OR_RETURN(at::Tensor x, LoadF64(plan, t, m, ctx));
      taus.push_back((x - base).reshape({-1}));
    }
    return CatchAten(plus_ ? "ramplus_tl" : "ram", [&]() -> absl::Status {
      const at::Tensor tv = at::stack(taus);  // [models, entries]
      const at::Tensor nonzero = tv.abs() > epsilon_;
      const at::Tensor counts = nonzero.sum(0, /*keepdim=*/true);
      const at::Tensor overlap = counts > 1;
      const at::Tensor unique = counts == 1;
      const at::Tensor tz = tv * nonzero;
      at::Tensor unique_part = tz * unique;
      if (plus_) {
        const at::Tensor shared = (nonzero & overlap).sum(1);
        const at::Tensor alone = (nonzero & unique).sum(1);
        const at::Tensor rho =
            shared.to(at::kDouble) / alone.to(at::kDouble).clamp_min(epsilon_);
        const at::Tensor lambda = 1 + r_ * rho.clamp(0, alpha_);
        unique_part = unique_part * lambda.unsqueeze(-1);
      }
      const at::Tensor merged =
          (unique_part + tz * overlap / counts.clamp_min(1)).sum(0);
      return WriteToSink(base + merged.reshape(base.sizes()), out);
    });
  }

 private:
  bool plus_;
  std::vector<int> models_;
  double epsilon_ = 1e-5, r_ = 0.1, alpha_ = 0.2;
};

}  // namespace

std::unique_ptr<MergeMethod> NewRamMethod() {
  return std::make_unique<RamMethod>(false);
}

std::unique_ptr<MergeMethod> NewRamPlusTlMethod() {
  return std::make_unique<RamMethod>(true);
}

}  // namespace mergeserve
