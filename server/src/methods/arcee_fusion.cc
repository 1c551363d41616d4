// arcee_fusion (mergekit): base plus one model; an entry takes the model's
// value where its importance |θ1 − θ0| · KL(softmax θ1 ‖ softmax θ0) (KL per
// row) is an upper outlier (≥ median + 1.5 IQR), else the base's. The
// importance, quantiles and threshold are float64 over every entry (mergekit
// works in the merge dtype and samples 10^6 entries of large tensors; the
// spec says why we do not).
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class ArceeFusionMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    MS_ASSIGN_OR_RETURN(model_, BaseAndOneModel(plan, "arcee_fusion"));
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    MS_ASSIGN_OR_RETURN(at::Tensor base, LoadF64(plan, t, -1, ctx));
    MS_ASSIGN_OR_RETURN(at::Tensor m, LoadF64(plan, t, model_, ctx));
    return CatchAten("arcee_fusion", [&]() -> absl::Status {
      const int64_t last = base.dim() == 0 ? 1 : base.size(-1);
      const at::Tensor b2 = base.reshape({-1, last});
      const at::Tensor m2 = m.reshape({-1, last});
      const at::Tensor p = at::softmax(m2, 1) + 1e-8;
      const at::Tensor q = at::softmax(b2, 1) + 1e-8;
      const at::Tensor kl = (p * (p / q).log()).sum(1, true);
      const at::Tensor importance = ((m2 - b2).abs() * kl).reshape({-1});
      const at::Tensor sorted = std::get<0>(importance.sort());
      const int64_t n = sorted.numel();
      auto quantile = [&](double x) {
        const auto i =
            static_cast<int64_t>(std::floor(x * static_cast<double>(n - 1)));
        return sorted[i].item<double>();
      };
      const double threshold =
          quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25));
      const at::Tensor keep = (importance >= threshold).reshape(m.sizes());
      return WriteToSink(at::where(keep, m, base), out);
    });
  }

 private:
  int model_ = 0;
};

}  // namespace

std::unique_ptr<MergeMethod> NewArceeFusionMethod() {
  return std::make_unique<ArceeFusionMethod>();
}

}  // namespace mergeserve
