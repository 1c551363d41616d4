// fisher (Matena & Raffel, NeurIPS'22): θ* = Σ c_i F̂_i θ_i / Σ c_i F̂_i with
// F̂_i = max(F_i, fisher_floor); normalize: c_i = w_i / ‖F_i‖₂ over all merged
// tensors of model i. Diagonals are supplied per model (`fisher:`).
#include <ATen/core/Tensor.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class FisherMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext& ctx) override {
    const size_t n = plan.models().size();
    MS_ASSIGN_OR_RETURN(normalize_, plan.Bool("normalize", false));
    MS_ASSIGN_OR_RETURN(floor_, plan.GlobalNumber("fisher_floor", 1e-6));
    if (!(floor_ > 0)) {
      return absl::InvalidArgumentError("fisher_floor must be > 0");
    }
    norms_.assign(n, 1.0);
    // Every model needs a Fisher for every merged tensor; the norm streams
    // over them (double accumulation).
    std::vector<double> sq(n, 0.0);
    for (const PlannedTensor& t : plan.tensors()) {
      if (!t.merge) continue;
      for (size_t i = 0; i < n; ++i) {
        MS_ASSIGN_OR_RETURN(TensorView f,
                            plan.Aux(static_cast<int>(i), "fisher", t.name));
        if (f.info->shape != t.shape || !IsMergeable(f.info->dtype)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "Fisher of model '", plan.models()[i].ref, "' for tensor '",
              t.name, "' has the wrong shape or dtype"));
        }
        if (!normalize_) continue;
        std::vector<float> buf(
            static_cast<size_t>(std::min<int64_t>(t.numel, ctx.chunk_elems)));
        for (int64_t b = 0; b < t.numel; b += ctx.chunk_elems) {
          const int64_t c = std::min(ctx.chunk_elems, t.numel - b);
          LoadF32(f, b, c, buf.data());
          for (int64_t j = 0; j < c; ++j) {
            sq[i] += static_cast<double>(buf[static_cast<size_t>(j)]) *
                     buf[static_cast<size_t>(j)];
          }
        }
      }
    }
    if (normalize_) {
      for (size_t i = 0; i < n; ++i) {
        norms_[i] = std::sqrt(sq[i]);
        if (!(norms_[i] > 0)) {
          return absl::InvalidArgumentError(
              absl::StrCat("the Fisher of model '", plan.models()[i].ref,
                           "' is all zero; cannot normalize"));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    const std::string dev = ctx.backend == Backend::kAten ? ctx.device : "cpu";
    at::Tensor num, den;
    for (size_t i = 0; i < plan.models().size(); ++i) {
      const std::string& ref = plan.models()[i].ref;
      MS_ASSIGN_OR_RETURN(double w,
                          plan.Number("weight", static_cast<int>(i), t, 1));
      MS_ASSIGN_OR_RETURN(at::Tensor theta, LoadChecked(t.models[i], dev, ref));
      MS_ASSIGN_OR_RETURN(TensorView fv,
                          plan.Aux(static_cast<int>(i), "fisher", t.name));
      MS_ASSIGN_OR_RETURN(at::Tensor f,
                          LoadChecked(fv, dev, ref + " (fisher)"));
      MS_RETURN_IF_ERROR(CatchAten("fisher", [&]() -> absl::Status {
        const double c = normalize_ ? w / norms_[i] : w;
        const at::Tensor cf = f.clamp_min(floor_) * static_cast<float>(c);
        num = i == 0 ? cf * theta : num + cf * theta;
        den = i == 0 ? cf : den + cf;
        return absl::OkStatus();
      }));
    }
    return CatchAten("fisher", [&]() -> absl::Status {
      return WriteToSink(num / den, out);
    });
  }

 private:
  bool normalize_ = false;
  double floor_ = 1e-6;
  std::vector<double> norms_;
};

}  // namespace

std::unique_ptr<MergeMethod> NewFisherMethod() {
  return std::make_unique<FisherMethod>();
}

}  // namespace mergeserve
