// nuslerp (mergekit): slerp of two models by weight, t = w2 / (w1 + w2),
// of whole tensors (nuslerp_flatten, default) or of their rows, or with
// nuslerp_row_wise of their columns (mergekit's code moves dim 0 last); of
// the task vectors when a base is given. No colinearity threshold: lerp
// only where |sin ω| < 1e-8.
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class NuSlerpMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    models_ = NonBaseModels(plan);
    if (models_.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("nuslerp merges exactly 2 models besides the base, got ",
                       models_.size()));
    }
    MS_ASSIGN_OR_RETURN(flatten_, plan.Bool("nuslerp_flatten", true));
    MS_ASSIGN_OR_RETURN(row_wise_, plan.Bool("nuslerp_row_wise", false));
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    MS_ASSIGN_OR_RETURN(
        double w1, RequiredNumber(plan, "nuslerp", "weight", models_[0], t));
    MS_ASSIGN_OR_RETURN(
        double w2, RequiredNumber(plan, "nuslerp", "weight", models_[1], t));
    const double frac = std::fabs(w1 + w2) < 1e-6 ? 0.5 : w2 / (w1 + w2);
    const bool with_base = plan.base() != nullptr;
    at::Tensor base;
    if (with_base) {
      MS_ASSIGN_OR_RETURN(base, LoadF64(plan, t, -1, ctx));
    }
    MS_ASSIGN_OR_RETURN(at::Tensor a, LoadF64(plan, t, models_[0], ctx));
    MS_ASSIGN_OR_RETURN(at::Tensor b, LoadF64(plan, t, models_[1], ctx));
    return CatchAten("nuslerp", [&]() -> absl::Status {
      if (with_base) {
        a = a - base;
        b = b - base;
      }
      const std::vector<int64_t> shape = a.sizes().vec();
      // Vectors as rows of a 2-D tensor.
      bool moved = false;
      if (flatten_ || a.dim() <= 1) {
        a = a.reshape({1, -1});
        b = b.reshape({1, -1});
      } else if (row_wise_) {
        a = a.movedim(0, -1);
        b = b.movedim(0, -1);
        moved = true;
      }
      const std::vector<int64_t> work_shape = a.sizes().vec();
      a = a.reshape({-1, a.size(-1)});
      b = b.reshape({-1, b.size(-1)});
      const at::Tensor an = a / a.norm(2, {1}, true).clamp_min(1e-7);
      const at::Tensor bn = b / b.norm(2, {1}, true).clamp_min(1e-7);
      const at::Tensor omega = (an * bn).sum(1, true).clamp(-1, 1).acos();
      const at::Tensor so = omega.sin();
      const at::Tensor lerp = a * (1 - frac) + b * frac;
      const at::Tensor slerp =
          (((1 - frac) * omega).sin() * a + (frac * omega).sin() * b) / so;
      at::Tensor r = at::where(so.abs() < 1e-8, lerp, slerp);
      r = r.reshape(work_shape);
      if (moved) r = r.movedim(-1, 0);
      r = r.reshape(shape);
      if (with_base) r = r + base;
      return WriteToSink(r, out);
    });
  }

 private:
  std::vector<int> models_;
  bool flatten_ = true;
  bool row_wise_ = false;
};

}  // namespace

std::unique_ptr<MergeMethod> NewNuSlerpMethod() {
  return std::make_unique<NuSlerpMethod>();
}

}  // namespace mergeserve
