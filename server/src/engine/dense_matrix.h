// Row-major fp64 matrices and the few LAPACK/BLAS operations the matrix
// methods (tsv, iso_c, iso_cts) and `analyze`'s subspace overlap need: thin
// SVD, product, polar factor. They call the system's LAPACK directly
// (Debian's alternatives pick OpenBLAS when libopenblas0-pthread is
// installed), so the fused backend does not go through ATen; the ATen
// backend computes the same math with torch.linalg.svd, and tests hold the
// two equal.
#ifndef MERGESERVE_ENGINE_DENSE_MATRIX_H_
#define MERGESERVE_ENGINE_DENSE_MATRIX_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

struct DenseMatrix {
  DenseMatrix() = default;
  DenseMatrix(int64_t rows, int64_t cols)
      : rows(rows), cols(cols), data(static_cast<size_t>(rows * cols), 0.0) {}
  double& at(int64_t i, int64_t j) {
    return data[static_cast<size_t>(i * cols + j)];
  }
  double at(int64_t i, int64_t j) const {
    return data[static_cast<size_t>(i * cols + j)];
  }
  double* row(int64_t i) { return data.data() + i * cols; }
  const double* row(int64_t i) const { return data.data() + i * cols; }
  int64_t rows = 0, cols = 0;
  std::vector<double> data;
};

// A = U·diag(S)·Vt with r = min(m, n): U is m×r, S has r entries in
// descending order, Vt is r×n (LAPACK dgesdd).
struct ThinSvd {
  DenseMatrix u, vt;
  std::vector<double> s;
};
absl::StatusOr<ThinSvd> ComputeThinSvd(const DenseMatrix& a);

// a·b (BLAS dgemm). Like ComputeThinSvd, FAILED_PRECONDITION when LAPACK
// cannot be loaded.
absl::StatusOr<DenseMatrix> MatMul(const DenseMatrix& a, const DenseMatrix& b);
// aᵀ·b.
absl::StatusOr<DenseMatrix> MatMulTransA(const DenseMatrix& a,
                                         const DenseMatrix& b);

// polar(A) = U·Vt of A's thin SVD (the matrix methods' orthogonalisation).
absl::StatusOr<DenseMatrix> PolarFactor(const DenseMatrix& a);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_DENSE_MATRIX_H_
