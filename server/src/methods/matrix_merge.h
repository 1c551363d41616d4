// The matrix methods' common rules (methods.md, "Matrix methods: common
// rules"): which tensors are matrices (floating, 2-D, `svd` true), per-model
// weights, θ = θ0 + λ·τ_m, the mean of the task vectors for every other
// tensor, and the server cache of τ_m. tsv, iso_c and iso_cts (one file
// each) supply the per-matrix math twice: on LAPACK (the fused backend) and
// on ATen (torch.linalg.svd, CPU or CUDA). Both run in fp64, which the spec
// allows and which keeps the two within far less than its tolerance.
//
// Memory: one matrix is merged at a time; the algorithms read the experts'
// task vectors one after another (twice for iso_cts) instead of holding
// them all, so a merge holds a few matrices of the largest size.
#ifndef MERGESERVE_METHODS_MATRIX_MERGE_H_
#define MERGESERVE_METHODS_MATRIX_MERGE_H_

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dense_matrix.h"
#include "mergeserve/engine/merge_method.h"

namespace mergeserve {

// One matrix's inputs: w_k·τ_k for expert k in [0, count), read from the
// checkpoints on each call.
struct MatrixInputs {
  std::string name;
  int64_t rows = 0, cols = 0;
  int count = 0;
  std::function<absl::StatusOr<DenseMatrix>(int k)> tau;
};

// Σ_k w_k·τ_k of one matrix (iso_c, iso_cts), on LAPACK's side or ATen's.
absl::StatusOr<DenseMatrix> SumOfTaus(const MatrixInputs& in);
absl::StatusOr<at::Tensor> SumOfTausAten(const MatrixInputs& in,
                                         const std::string& device);

// Singular triplets stacked in slots (TSV's per-task blocks, Iso-CTS's task
// and common blocks), and the matrix rebuilt from the polar factors of the
// stacked vectors. Slots never filled stay zero.
struct StackedTriplets {
  StackedTriplets(int64_t rows, int64_t cols);
  // Triplets [0, count) of `svd` into slots [slot, slot + count).
  void Put(const ThinSvd& svd, int64_t count, int64_t slot);
  // polar(U)·diag(s)·polar(Vt); `flat`: every s replaced by their mean.
  absl::StatusOr<DenseMatrix> Rebuild(bool flat) const;

  DenseMatrix u, vt;
  std::vector<double> s;
};

// at::Tensor (any device, any float dtype, 2-D) <-> DenseMatrix.
at::Tensor ToAten(const DenseMatrix& m, const std::string& device);
DenseMatrix FromAten(const at::Tensor& t);
// torch.linalg.svd(A, full_matrices=False) as (U, S, Vh); where gesdd does
// not converge, ComputeThinSvd's fallback on the CPU. Throws on failure
// (inside CatchAten).
std::tuple<at::Tensor, at::Tensor, at::Tensor> SvdAten(const at::Tensor& a);
// polar(A) = U·Vh of SvdAten(A).
at::Tensor PolarAten(const at::Tensor& a);

class MatrixMerge : public MergeMethod {
 public:
  explicit MatrixMerge(std::string method) : method_(std::move(method)) {}

  absl::Status Prepare(const MergePlan& plan, ExecContext& ctx) override;
  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override;

 protected:
  // Reads the method's own parameters and checks them against every matrix
  // of the plan (r = min(rows, cols)), before any work starts.
  virtual absl::Status PrepareMethod(const MergePlan& plan, int experts) = 0;
  // τ_m of one matrix.
  virtual absl::StatusOr<DenseMatrix> MergeMatrixLapack(
      const MatrixInputs& in) const = 0;
  virtual absl::StatusOr<DenseMatrix> MergeMatrixAten(
      const MatrixInputs& in, const std::string& device) const = 0;
  // The method's parameters as they enter τ_m (part of the cache key).
  virtual std::string OptionsKey() const = 0;

  const std::string method_;

 private:
  // Whether `t` gets the matrix treatment.
  absl::StatusOr<bool> IsMatrix(const MergePlan& plan,
                                const PlannedTensor& t) const;

  std::vector<int> experts_;
};

// Every 2-D merged tensor the `svd` parameter leaves as a matrix; for
// PrepareMethod's checks.
absl::StatusOr<std::vector<const PlannedTensor*>> PlanMatrices(
    const MergePlan& plan);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_MATRIX_MERGE_H_
