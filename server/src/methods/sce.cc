// sce (mergekit; Select–Calculate–Erase from FuseChat): keep the entries
// whose task-vector variance across models is in the top select_topk,
// weight each model by its task vector's mean square, and average the
// entries that agree with the sign of the unweighted sum.
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class SceMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    if (plan.base() == nullptr) {
      return absl::InvalidArgumentError("sce needs base_model");
    }
    models_ = NonBaseModels(plan);
    if (models_.empty()) {
      return absl::InvalidArgumentError("no models to merge besides the base");
    }
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    MS_ASSIGN_OR_RETURN(double topk, plan.Number("select_topk", -1, t, 1.0));
    MS_ASSIGN_OR_RETURN(at::Tensor base, LoadF64(plan, t, -1, ctx));
    std::vector<at::Tensor> taus;
    for (int m : models_) {
      MS_ASSIGN_OR_RETURN(at::Tensor v, LoadF64(plan, t, m, ctx));
      taus.push_back(v - base);
    }
    return CatchAten("sce", [&]() -> absl::Status {
      at::Tensor tau = at::stack(taus, 0);  // (N, ...)
      const int64_t n = tau.size(0);
      if (topk < 1) {
        // Select: the k entries of largest population variance.
        const at::Tensor var = tau.var(0, /*unbiased=*/false).reshape({-1});
        const int64_t nonzero = var.ne(0).sum().item<int64_t>();
        // k as torch computes it: the count promoted to float32.
        const float product =
            static_cast<float>(nonzero) * static_cast<float>(topk);
        const auto k =
            topk <= 0 ? int64_t{0} : static_cast<int64_t>(std::floor(product));
        at::Tensor mask = at::zeros_like(var, at::kBool);
        if (k > 0) {
          const at::Tensor idx =
              std::get<1>(var.topk(std::min(k, var.numel())));
          mask.index_fill_(0, idx, true);
        }
        tau = tau * mask.reshape(tau.sizes().slice(1)).unsqueeze(0);
      }
      // Calculate: weights from the mean squares.
      at::Tensor w = tau.pow(2).reshape({n, -1}).mean(1);
      const double wsum = w.sum().item<double>();
      if (std::fabs(wsum) < 1e-6) {
        w = at::full_like(w, 1.0 / static_cast<double>(n));
      } else {
        w = w / wsum;
      }
      // Erase: entries that disagree with the sign of the plain sum.
      const at::Tensor sign = at::where(tau.sum(0) >= 0, 1.0, -1.0);
      const at::Tensor agree =
          (tau.sign() == sign.unsqueeze(0)).to(at::kDouble);
      std::vector<int64_t> wshape(static_cast<size_t>(tau.dim()), 1);
      wshape[0] = n;
      const at::Tensor wm = w.reshape(wshape) * agree;
      const at::Tensor merged = (wm * tau).sum(0) / wm.sum(0).clamp_min(1e-6);
      return WriteToSink(base + merged, out);
    });
  }

 private:
  std::vector<int> models_;
};

}  // namespace

std::unique_ptr<MergeMethod> NewSceMethod() {
  return std::make_unique<SceMethod>();
}

}  // namespace mergeserve
