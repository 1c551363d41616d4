// nearswap (mergekit): base plus one model; entries closer than t to the
// base are taken from the model, farther ones move toward it by
// t / |θ0 − θ1|.
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class NearSwapMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    MS_ASSIGN_OR_RETURN(model_, BaseAndOneModel(plan, "nearswap"));
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    MS_ASSIGN_OR_RETURN(double frac,
                        RequiredNumber(plan, "nearswap", "t", -1, t));
    MS_ASSIGN_OR_RETURN(at::Tensor base, LoadF64(plan, t, -1, ctx));
    MS_ASSIGN_OR_RETURN(at::Tensor m, LoadF64(plan, t, model_, ctx));
    return CatchAten("nearswap", [&]() -> absl::Status {
      const at::Tensor w =
          (frac / (base - m).abs().clamp_min(1e-6)).clamp(0, 1);
      return WriteToSink(w * m + (1 - w) * base, out);
    });
  }

 private:
  int model_ = 0;
};

}  // namespace

std::unique_ptr<MergeMethod> NewNearSwapMethod() {
  return std::make_unique<NearSwapMethod>();
}

}  // namespace mergeserve
