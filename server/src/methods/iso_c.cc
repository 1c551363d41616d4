// iso_c — Isotropic merging in the common subspace (Marczak et al., ICML'25,
// "No Task Left Behind"), following the authors' src/utils/iso.py: the
// summed task matrix M keeps its singular vectors and gets a flat spectrum,
// τ_m = mean(S)·U·Vᵀ = (‖M‖_* / r)·polar(M).
#include <ATen/ATen.h>

#include <numeric>

#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/matrix_merge.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class IsoCMethod : public MatrixMerge {
 public:
  IsoCMethod() : MatrixMerge("iso_c") {}

 protected:
  absl::Status PrepareMethod(const MergePlan&, int) override {
    return absl::OkStatus();
  }
  std::string OptionsKey() const override { return ""; }

  absl::StatusOr<DenseMatrix> MergeMatrixLapack(
      const MatrixInputs& in) const override {
    MS_ASSIGN_OR_RETURN(DenseMatrix sum, SumOfTaus(in));
    MS_ASSIGN_OR_RETURN(ThinSvd svd, ComputeThinSvd(sum));
    if (svd.s.empty()) return sum;
    const double mean = std::accumulate(svd.s.begin(), svd.s.end(), 0.0) /
                        static_cast<double>(svd.s.size());
    MS_ASSIGN_OR_RETURN(DenseMatrix out, MatMul(svd.u, svd.vt));
    for (double& v : out.data) v *= mean;
    return out;
  }

  absl::StatusOr<DenseMatrix> MergeMatrixAten(
      const MatrixInputs& in, const std::string& device) const override {
    DenseMatrix result;
    MS_RETURN_IF_ERROR(CatchAten("iso_c", [&]() -> absl::Status {
      MS_ASSIGN_OR_RETURN(at::Tensor sum, SumOfTausAten(in, device));
      auto [u, s, vh] = SvdAten(sum);
      result = FromAten(at::matmul(u, vh) * s.mean());
      return absl::OkStatus();
    }));
    return result;
  }
};

}  // namespace

std::unique_ptr<MergeMethod> NewIsoCMethod() {
  return std::make_unique<IsoCMethod>();
}

}  // namespace mergeserve
