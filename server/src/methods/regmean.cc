// regmean (Jin et al., ICLR'23): for each linear weight W_i (out × in) with a
// Gram G_i (in × in) in every model, W*ᵀ = (Σ G'_i)⁻¹ Σ G'_i W_iᵀ where
// G'_i = α G_i + (1 − α) diag(G_i) (optionally + ridge·mean(diag)·I).
// Everything else is the weighted average. Solved in fp64 with Cholesky,
// LU when the sum is not positive definite.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cholesky_solve.h>
#include <ATen/ops/diag_embed.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/linalg_solve_ex.h>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class RegMeanMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    MS_ASSIGN_OR_RETURN(alpha_, plan.GlobalNumber("alpha", 1.0));
    MS_ASSIGN_OR_RETURN(ridge_, plan.GlobalNumber("ridge", 0.0));
    if (!(alpha_ >= 0 && alpha_ <= 1)) {
      return absl::InvalidArgumentError("regmean: alpha must be in [0, 1]");
    }
    if (!(ridge_ >= 0)) {
      return absl::InvalidArgumentError("regmean: ridge must be >= 0");
    }
    for (size_t i = 0; i < plan.models().size(); ++i) {
      if (!plan.models()[i].aux.count("gram")) {
        return absl::InvalidArgumentError(absl::StrCat(
            "regmean: model '", plan.models()[i].ref,
            "' needs a 'gram' parameter naming its Gram checkpoint"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    const std::string dev = ctx.backend == Backend::kAten ? ctx.device : "cpu";
    const size_t n = plan.models().size();
    // The closed form applies where every model has a Gram for this tensor.
    std::vector<TensorView> grams;
    for (size_t i = 0; i < n; ++i) {
      auto g = plan.Aux(static_cast<int>(i), "gram", t.name);
      if (!g.ok()) break;
      grams.push_back(*g);
    }
    const bool closed_form = grams.size() == n && t.shape.size() == 2;
    std::vector<at::Tensor> ws;
    std::vector<double> weights;
    for (size_t i = 0; i < n; ++i) {
      MS_ASSIGN_OR_RETURN(at::Tensor w,
                          LoadChecked(t.models[i], dev, plan.models()[i].ref));
      ws.push_back(w);
      MS_ASSIGN_OR_RETURN(double wi,
                          plan.Number("weight", static_cast<int>(i), t, 1));
      weights.push_back(wi);
    }
    if (closed_form) {
      for (size_t i = 0; i < n; ++i) {
        const auto& s = grams[i].info->shape;
        if (s.size() != 2 || s[0] != t.shape[1] || s[1] != t.shape[1]) {
          return absl::InvalidArgumentError(
              absl::StrCat("regmean: Gram of model '", plan.models()[i].ref,
                           "' for tensor '", t.name, "' must be [", t.shape[1],
                           ", ", t.shape[1], "]"));
        }
      }
    }
    return CatchAten("regmean", [&]() -> absl::Status {
      if (!closed_form) {
        at::Tensor acc = ws[0] * weights[0];
        double wsum = weights[0];
        for (size_t i = 1; i < n; ++i) {
          acc = acc + ws[i] * weights[i];
          wsum += weights[i];
        }
        return WriteToSink(acc / wsum, out);
      }
      at::Tensor lhs, rhs;
      for (size_t i = 0; i < n; ++i) {
        MS_ASSIGN_OR_RETURN(
            at::Tensor g,
            LoadChecked(grams[i], dev, plan.models()[i].ref + " (gram)"));
        at::Tensor g64 = g.to(at::kDouble);
        // Scale off-diagonal entries by alpha.
        const at::Tensor diag = at::diag_embed(g64.diagonal());
        g64 = (g64 * alpha_ + diag * (1 - alpha_)) * weights[i];
        const at::Tensor wt = ws[i].to(at::kDouble).t();  // in × out
        lhs = i == 0 ? g64 : lhs + g64;
        rhs = i == 0 ? g64.matmul(wt) : rhs + g64.matmul(wt);
      }
      if (ridge_ > 0) {
        const double mean_diag = lhs.diagonal().mean().item<double>();
        lhs = lhs + at::eye(lhs.size(0), lhs.options()) * (ridge_ * mean_diag);
      }
      at::Tensor solution;
      auto [chol, info] = at::linalg_cholesky_ex(lhs);
      if (info.item<int64_t>() == 0) {
        solution = at::cholesky_solve(rhs, chol);
      } else {
        auto [lu_solution, lu_info] = at::linalg_solve_ex(lhs, rhs);
        if (lu_info.item<int64_t>() != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "regmean: the summed Gram matrix of tensor '", t.name,
              "' is singular (some inputs never vary, e.g. constant pixels "
              "or padding); set a ridge, e.g. ridge: 0.001"));
        }
        solution = lu_solution;
      }
      return WriteToSink(solution.t().contiguous(), out);
    });
  }

 private:
  double alpha_ = 1.0;
  double ridge_ = 0.0;
};

}  // namespace

std::unique_ptr<MergeMethod> NewRegMeanMethod() {
  return std::make_unique<RegMeanMethod>();
}

}  // namespace mergeserve
