// iso_cts — Isotropic merging in common and task-specific subspaces
// (Marczak et al., ICML'25), following the authors' src/utils/iso.py: the
// top c singular triplets of the summed task matrix are kept as the common
// subspace; each task adds its top n triplets outside it; the stacked
// singular vectors are orthogonalised and the spectrum flattened to its mean.
#include <ATen/ATen.h>

#include <cfenv>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/matrix_merge.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

struct Split {
  int64_t common = 0, per_task = 0;
};

class IsoCtsMethod : public MatrixMerge {
 public:
  IsoCtsMethod() : MatrixMerge("iso_cts") {}

 protected:
  absl::Status PrepareMethod(const MergePlan& plan, int experts) override {
    experts_ = experts;
    MS_ASSIGN_OR_RETURN(fraction_,
                        plan.GlobalNumber("common_space_fraction", 0.8));
    if (!(fraction_ >= 0 && fraction_ <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "iso_cts: common_space_fraction must be in [0, 1], got ", fraction_));
    }
    MS_ASSIGN_OR_RETURN(auto matrices, PlanMatrices(plan));
    for (const PlannedTensor* t : matrices) {
      const int64_t r = std::min(t->shape[0], t->shape[1]);
      if (SplitOf(r).common < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "iso_cts: tensor '", t->name, "' (", t->shape[0], "x", t->shape[1],
            ") has rank ", r, ", too small to give each of ", experts,
            " tasks its share at common_space_fraction ", fraction_));
      }
    }
    return absl::OkStatus();
  }

  std::string OptionsKey() const override {
    return absl::StrFormat("%a", fraction_);
  }

  absl::StatusOr<DenseMatrix> MergeMatrixLapack(
      const MatrixInputs& in) const override {
    const int64_t m = in.rows, n = in.cols, r = std::min(m, n);
    const Split split = SplitOf(r);
    const int64_t c = split.common, per = split.per_task;
    MS_ASSIGN_OR_RETURN(DenseMatrix sum, SumOfTaus(in));
    MS_ASSIGN_OR_RETURN(ThinSvd common, ComputeThinSvd(sum));
    StackedTriplets stacked(m, n);
    // The common triplets fill the last c slots.
    stacked.Put(common, c, in.count * per);
    DenseMatrix uc(m, c);
    for (int64_t row = 0; row < m; ++row) {
      std::copy_n(common.u.row(row), c, uc.row(row));
    }
    for (int i = 0; i < in.count && per > 0; ++i) {
      MS_ASSIGN_OR_RETURN(DenseMatrix tau, in.tau(i));
      // W_i = τ_i − U_c·(U_cᵀ·τ_i): the task outside the common subspace.
      MS_ASSIGN_OR_RETURN(const DenseMatrix coords, MatMulTransA(uc, tau));
      MS_ASSIGN_OR_RETURN(const DenseMatrix proj, MatMul(uc, coords));
      for (size_t j = 0; j < tau.data.size(); ++j) tau.data[j] -= proj.data[j];
      MS_ASSIGN_OR_RETURN(ThinSvd svd, ComputeThinSvd(tau));
      stacked.Put(svd, per, i * per);
    }
    return stacked.Rebuild(/*flat=*/true);
  }

  absl::StatusOr<DenseMatrix> MergeMatrixAten(
      const MatrixInputs& in, const std::string& device) const override {
    DenseMatrix result;
    MS_RETURN_IF_ERROR(CatchAten("iso_cts", [&]() -> absl::Status {
      const Split split = SplitOf(std::min(in.rows, in.cols));
      const int64_t c = split.common, per = split.per_task;
      MS_ASSIGN_OR_RETURN(at::Tensor sum, SumOfTausAten(in, device));
      auto [uall, sall, vhall] = SvdAten(sum);
      const at::Tensor uc = uall.narrow(1, 0, c);
      std::vector<at::Tensor> us, ss, vs;
      for (int i = 0; i < in.count && per > 0; ++i) {
        MS_ASSIGN_OR_RETURN(DenseMatrix tau, in.tau(i));
        const at::Tensor x = ToAten(tau, device);
        const at::Tensor w = x - at::matmul(uc, at::matmul(uc.t(), x));
        auto [ui, si, vhi] = SvdAten(w);
        us.push_back(ui.narrow(1, 0, per));
        ss.push_back(si.narrow(0, 0, per));
        vs.push_back(vhi.narrow(0, 0, per));
      }
      us.push_back(uc);
      ss.push_back(sall.narrow(0, 0, c));
      vs.push_back(vhall.narrow(0, 0, c));
      const at::Tensor u = at::cat(us, 1), s = at::cat(ss, 0),
                       vt = at::cat(vs, 0);
      result = FromAten(at::matmul(PolarAten(u), PolarAten(vt)) * s.mean());
      return absl::OkStatus();
    }));
    return result;
  }

 private:
  // c = ⌊r·f⌋ as a double product, then the task-specific part rounded to a
  // multiple of N with Python's round (half to even: nearbyint under the
  // default rounding mode) and c given the rest.
  Split SplitOf(int64_t r) const {
    const auto c0 = static_cast<int64_t>(static_cast<double>(r) * fraction_);
    const double share =
        static_cast<double>(r - c0) / static_cast<double>(experts_);
    const auto per = static_cast<int64_t>(std::nearbyint(share));
    Split s;
    s.per_task = per;
    s.common = r - per * experts_;
    return s;
  }

  int experts_ = 0;
  double fraction_ = 0.8;
};

}  // namespace

std::unique_ptr<MergeMethod> NewIsoCtsMethod() {
  return std::make_unique<IsoCtsMethod>();
}

}  // namespace mergeserve
