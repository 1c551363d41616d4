// karcher (mergekit): the Riemannian (Karcher) mean of the models'
// flattened weights on the unit sphere, by fixed-point iteration, scaled by
// their mean norm. Equal weights; a base_model that is not listed is one of
// the inputs, as mergekit's planner makes it.
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class KarcherMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    inputs_.clear();
    bool base_listed = false;
    for (size_t i = 0; i < plan.models().size(); ++i) {
      inputs_.push_back(static_cast<int>(i));
      base_listed = base_listed || plan.models()[i].is_base;
    }
    if (plan.base() != nullptr && !base_listed) inputs_.push_back(-1);
    if (inputs_.empty()) {
      return absl::InvalidArgumentError("karcher needs at least one model");
    }
    MS_ASSIGN_OR_RETURN(double iters, plan.GlobalNumber("max_iter", 10));
    MS_ASSIGN_OR_RETURN(tol_, plan.GlobalNumber("tol", 1e-5));
    if (iters < 0 || iters != std::floor(iters) || !(tol_ >= 0)) {
      return absl::InvalidArgumentError(
          "karcher: 'max_iter' must be a whole number >= 0 and 'tol' >= 0");
    }
    max_iter_ = static_cast<int>(iters);
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    std::vector<at::Tensor> x;
    for (int m : inputs_) {
      MS_ASSIGN_OR_RETURN(at::Tensor v, LoadF64(plan, t, m, ctx));
      x.push_back(v.reshape({-1}));
    }
    return CatchAten("karcher", [&]() -> absl::Status {
      const size_t n = x.size();
      std::vector<double> norms(n);
      std::vector<at::Tensor> u(n);
      std::vector<size_t> valid;
      double norm_sum = 0;
      for (size_t i = 0; i < n; ++i) {
        norms[i] = x[i].norm().item<double>();
        norm_sum += norms[i];
        u[i] = norms[i] > 0 ? x[i] / norms[i] : at::zeros_like(x[i]);
        if (norms[i] > tol_) valid.push_back(i);
      }
      const std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
      if (valid.empty())
        return WriteToSink(at::zeros(shape, x[0].options()), out);
      const double alpha = 1.0 / static_cast<double>(valid.size());
      at::Tensor mean = at::zeros_like(x[0]);
      for (size_t i : valid) mean = mean + alpha * u[i];
      const double mn = mean.norm().item<double>();
      at::Tensor p = mn < tol_ ? u[valid[0]] : mean / mn;
      for (int it = 0; it < max_iter_; ++it) {
        at::Tensor tangent = at::zeros_like(p);
        for (size_t i : valid) {
          const double c =
              std::clamp((p * u[i]).sum().item<double>(), -1.0, 1.0);
          const double omega = std::acos(c);
          if (omega < tol_) continue;
          tangent =
              tangent + alpha * (omega / std::sin(omega)) * (u[i] - c * p);
        }
        const double tn = tangent.norm().item<double>();
        if (tn < tol_) break;
        p = std::cos(tn) * p + std::sin(tn) * (tangent / tn);
        const double pn = p.norm().item<double>();
        if (pn > tol_) p = p / pn;
      }
      return WriteToSink(
          (p * (norm_sum / static_cast<double>(n))).reshape(shape), out);
    });
  }

 private:
  std::vector<int> inputs_;  // plan model indices; -1 for an unlisted base
  int max_iter_ = 10;
  double tol_ = 1e-5;
};

}  // namespace

std::unique_ptr<MergeMethod> NewKarcherMethod() {
  return std::make_unique<KarcherMethod>();
}

}  // namespace mergeserve
