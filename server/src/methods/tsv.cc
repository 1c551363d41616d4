// tsv — TSV-Merge (Gargiulo et al., CVPR'25, "Task Singular Vectors"),
// following the authors' compute_and_sum_svd_mem_reduction (method TSVM):
// each task keeps its top k = ⌊r·sv_reduction⌋ singular triplets in its own
// block, the stacked singular vectors are orthogonalised (polar factors),
// and the matrix is rebuilt from them with the kept singular values.
#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/matrix_merge.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class TsvMethod : public MatrixMerge {
 public:
  TsvMethod() : MatrixMerge("tsv") {}

 protected:
  absl::Status PrepareMethod(const MergePlan& plan, int experts) override {
    experts_ = experts;
    // The authors' int(r * (1/N)), so the default is the same product.
    MS_ASSIGN_OR_RETURN(fraction_,
                        plan.GlobalNumber("sv_reduction", 1.0 / experts));
    if (!(fraction_ >= 0 && fraction_ <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tsv: sv_reduction must be in [0, 1], got ", fraction_));
    }
    MS_ASSIGN_OR_RETURN(auto matrices, PlanMatrices(plan));
    for (const PlannedTensor* t : matrices) {
      const int64_t r = std::min(t->shape[0], t->shape[1]);
      const int64_t k = Rank(r);
      if (k * experts > r) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tsv: sv_reduction ", fraction_, " keeps ", k,
            " singular triplets of each of ", experts, " tasks, more than the ",
            r, " of tensor '", t->name, "' (", t->shape[0], "x", t->shape[1],
            "); use at most 1/", experts));
      }
    }
    return absl::OkStatus();
  }

  std::string OptionsKey() const override {
    return absl::StrFormat("%a", fraction_);
  }

  absl::StatusOr<DenseMatrix> MergeMatrixLapack(
      const MatrixInputs& in) const override {
    const int64_t r = std::min(in.rows, in.cols), k = Rank(r);
    StackedTriplets stacked(in.rows, in.cols);
    // r < N: k = 0 and τ_m = 0 (the authors' behaviour).
    if (k == 0) return DenseMatrix(in.rows, in.cols);
    for (int i = 0; i < in.count; ++i) {
      MS_ASSIGN_OR_RETURN(DenseMatrix tau, in.tau(i));
      MS_ASSIGN_OR_RETURN(ThinSvd svd, ComputeThinSvd(tau));
      stacked.Put(svd, k, i * k);
    }
    return stacked.Rebuild(/*flat=*/false);
  }

  absl::StatusOr<DenseMatrix> MergeMatrixAten(
      const MatrixInputs& in, const std::string& device) const override {
    DenseMatrix result;
    MS_RETURN_IF_ERROR(CatchAten("tsv", [&]() -> absl::Status {
      const int64_t m = in.rows, n = in.cols, r = std::min(m, n), k = Rank(r);
      const auto opts =
          at::TensorOptions().dtype(at::kDouble).device(at::Device(device));
      at::Tensor u = at::zeros({m, r}, opts), s = at::zeros({r}, opts),
                 vt = at::zeros({r, n}, opts);
      if (k == 0) {
        result = DenseMatrix(m, n);
        return absl::OkStatus();
      }
      for (int i = 0; i < in.count; ++i) {
        MS_ASSIGN_OR_RETURN(DenseMatrix tau, in.tau(i));
        auto [ui, si, vhi] = SvdAten(ToAten(tau, device));
        u.narrow(1, i * k, k).copy_(ui.narrow(1, 0, k));
        s.narrow(0, i * k, k).copy_(si.narrow(0, 0, k));
        vt.narrow(0, i * k, k).copy_(vhi.narrow(0, 0, k));
      }
      result =
          FromAten(at::matmul(PolarAten(u) * s.unsqueeze(0), PolarAten(vt)));
      return absl::OkStatus();
    }));
    return result;
  }

 private:
  int64_t Rank(int64_t r) const {
    return static_cast<int64_t>(static_cast<double>(r) * fraction_);
  }

  int experts_ = 0;
  double fraction_ = 0;
};

}  // namespace

std::unique_ptr<MergeMethod> NewTsvMethod() {
  return std::make_unique<TsvMethod>();
}

}  // namespace mergeserve
