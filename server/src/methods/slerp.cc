// slerp: spherical interpolation of two models per tensor (mergekit's
// formula: angle from the unit-normalised flat vectors, lerp when they are
// nearly colinear, |cos| > 0.9995).
#include <ATen/core/Tensor.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class SlerpMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    first_ = second_ = -1;
    std::vector<int> others;
    for (size_t i = 0; i < plan.models().size(); ++i) {
      if (plan.models()[i].is_base) {
        first_ = static_cast<int>(i);
      } else {
        others.push_back(static_cast<int>(i));
      }
    }
    if (plan.base() != nullptr && first_ < 0) first_ = -2;  // base not listed
    const size_t total = others.size() + (first_ != -1 ? 1 : 0);
    if (total != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("slerp interpolates exactly 2 models, got ", total));
    }
    if (first_ == -1) {
      first_ = others[0];
      second_ = others[1];
    } else {
      second_ = others[0];
    }
    if (!plan.Has("t")) {
      return absl::InvalidArgumentError("slerp needs parameter 't' in [0, 1]");
    }
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    MS_ASSIGN_OR_RETURN(double frac, plan.Number("t", -1, t, 0));
    const std::string dev = ctx.backend == Backend::kAten ? ctx.device : "cpu";
    const TensorView& va =
        first_ == -2 ? t.base : t.models[static_cast<size_t>(first_)];
    const std::string ra = first_ == -2
                               ? *plan.config().base_model
                               : plan.models()[static_cast<size_t>(first_)].ref;
    MS_ASSIGN_OR_RETURN(at::Tensor a, LoadChecked(va, dev, ra));
    MS_ASSIGN_OR_RETURN(
        at::Tensor b,
        LoadChecked(t.models[static_cast<size_t>(second_)], dev,
                    plan.models()[static_cast<size_t>(second_)].ref));
    return CatchAten("slerp", [&]() -> absl::Status {
      const at::Tensor a64 = a.reshape({-1}).to(at::kDouble);
      const at::Tensor b64 = b.reshape({-1}).to(at::kDouble);
      const double na = a64.norm().item<double>();
      const double nb = b64.norm().item<double>();
      const double eps = 1e-8;
      const at::Tensor ua = na > eps ? a64 / na : a64;
      const at::Tensor ub = nb > eps ? b64 / nb : b64;
      const double dot = (ua * ub).sum().item<double>();
      double s0, s1;
      if (std::fabs(dot) > 0.9995) {
        s0 = 1 - frac;
        s1 = frac;
      } else {
        const double omega = std::acos(dot);
        const double so = std::sin(omega);
        s0 = std::sin((1 - frac) * omega) / so;
        s1 = std::sin(frac * omega) / so;
      }
      return WriteToSink(a64 * s0 + b64 * s1, out);
    });
  }

 private:
  int first_ = -1;  // model index, or -2 for the unlisted base
  int second_ = -1;
};

}  // namespace

std::unique_ptr<MergeMethod> NewSlerpMethod() {
  return std::make_unique<SlerpMethod>();
}

}  // namespace mergeserve
