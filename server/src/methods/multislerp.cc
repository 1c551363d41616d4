// multislerp (mergekit): a barycentre of several models on the sphere of
// flattened (task) vectors: the weighted mean direction, a tangent step
// along the weighted deviations from it, scaled by the weighted mean norm.
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class MultiSlerpMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    models_ = NonBaseModels(plan);
    if (models_.empty()) {
      return absl::InvalidArgumentError("multislerp needs at least one model");
    }
    MS_ASSIGN_OR_RETURN(normalize_, plan.Bool("normalize_weights", true));
    MS_ASSIGN_OR_RETURN(eps_, plan.GlobalNumber("eps", 1e-8));
    if (!(eps_ >= 0)) {
      return absl::InvalidArgumentError("multislerp: 'eps' must be >= 0");
    }
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    const bool with_base = plan.base() != nullptr;
    at::Tensor base;
    if (with_base) {
      MS_ASSIGN_OR_RETURN(base, LoadF64(plan, t, -1, ctx));
    }
    std::vector<at::Tensor> x;
    std::vector<double> w;
    for (int m : models_) {
      MS_ASSIGN_OR_RETURN(at::Tensor v, LoadF64(plan, t, m, ctx));
      MS_ASSIGN_OR_RETURN(double wi,
                          RequiredNumber(plan, "multislerp", "weight", m, t));
      x.push_back(with_base ? (v - base).reshape({-1}) : v.reshape({-1}));
      w.push_back(wi);
    }
    return CatchAten("multislerp", [&]() -> absl::Status {
      const std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
      auto finish = [&](at::Tensor r) {
        r = r.reshape(shape);
        if (with_base) r = r + base;
        return WriteToSink(r, out);
      };
      if (x.size() == 1) return finish(x[0]);
      if (normalize_) {
        double sum = 0;
        for (double v : w) sum += v;
        for (double& v : w) v /= sum;
      }
      std::vector<double> norms;
      std::vector<at::Tensor> u;
      at::Tensor m = at::zeros_like(x[0]);
      for (size_t i = 0; i < x.size(); ++i) {
        norms.push_back(x[i].norm().item<double>());
        u.push_back(x[i] / (norms[i] + eps_));  // added, not clamped
        m = m + w[i] * u[i];
      }
      const double mn = m.norm().item<double>();
      if (mn < eps_) {
        if (x.size() == 2) return finish(w[0] * x[0] + w[1] * x[1]);
        bool all_zero = true;
        for (double n : norms) all_zero = all_zero && n == 0;
        if (all_zero) return finish(at::zeros_like(x[0]));
        return absl::InvalidArgumentError(absl::StrCat(
            "multislerp: the models' directions cancel out in tensor '", t.name,
            "' (their weighted mean has norm ", mn, ")"));
      }
      const at::Tensor mh = m / mn;
      at::Tensor tangent = at::zeros_like(mh);
      double scale = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const double c = (u[i] * mh).sum().item<double>();
        tangent = tangent + w[i] * (u[i] - c * mh);
        scale += w[i] * norms[i];
      }
      const double a = tangent.norm().item<double>() + eps_;
      return finish((mh * std::cos(a) + tangent * (std::sin(a) / a)) * scale);
    });
  }

 private:
  std::vector<int> models_;
  bool normalize_ = true;
  double eps_ = 1e-8;
};

}  // namespace

std::unique_ptr<MergeMethod> NewMultiSlerpMethod() {
  return std::make_unique<MultiSlerpMethod>();
}

}  // namespace mergeserve
