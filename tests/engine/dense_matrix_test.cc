// The LAPACK/BLAS wrappers behind the matrix methods' fused backend.
#include "engine/dense_matrix.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

DenseMatrix Random(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<double> d;
  DenseMatrix m(rows, cols);
  for (double& v : m.data) v = d(rng);
  return m;
}

DenseMatrix NaiveProduct(const DenseMatrix& a, const DenseMatrix& b,
                         bool trans_a) {
  const int64_t m = trans_a ? a.cols : a.rows, k = trans_a ? a.rows : a.cols;
  DenseMatrix c(m, b.cols);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < b.cols; ++j) {
      double s = 0;
      for (int64_t l = 0; l < k; ++l) {
        s += (trans_a ? a.at(l, i) : a.at(i, l)) * b.at(l, j);
      }
      c.at(i, j) = s;
    }
  }
  return c;
}

void ExpectNear(const DenseMatrix& a, const DenseMatrix& b, double tol) {
  ASSERT_EQ(a.rows, b.rows);
  ASSERT_EQ(a.cols, b.cols);
  for (size_t j = 0; j < a.data.size(); ++j) {
    ASSERT_NEAR(a.data[j], b.data[j], tol) << j;
  }
}

void ExpectNear(const absl::StatusOr<DenseMatrix>& a, const DenseMatrix& b,
                double tol) {
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectNear(*a, b, tol);
}

TEST(DenseMatrixTest, ProductsMatchTheDefinition) {
  std::mt19937 rng(1);
  const DenseMatrix a = Random(7, 5, rng), b = Random(5, 3, rng),
                    c = Random(7, 4, rng);
  ExpectNear(MatMul(a, b), NaiveProduct(a, b, false), 1e-12);
  ExpectNear(MatMulTransA(a, c), NaiveProduct(a, c, true), 1e-12);
}

// Tall and wide: U·diag(S)·Vt rebuilds A, S descends, U and Vt have
// orthonormal columns / rows.
TEST(DenseMatrixTest, ThinSvdRebuildsTallAndWideMatrices) {
  std::mt19937 rng(2);
  for (auto [m, n] : {std::pair<int64_t, int64_t>{9, 4},
                      {4, 9},
                      {6, 6},
                      {64, 64},
                      {200, 120},
                      {120, 200}}) {
    const DenseMatrix a = Random(m, n, rng);
    auto svd = ComputeThinSvd(a);
    ASSERT_TRUE(svd.ok()) << svd.status();
    const int64_t r = std::min(m, n);
    ASSERT_EQ(svd->u.rows, m);
    ASSERT_EQ(svd->u.cols, r);
    ASSERT_EQ(svd->vt.rows, r);
    ASSERT_EQ(svd->vt.cols, n);
    for (int64_t j = 1; j < r; ++j) EXPECT_GE(svd->s[j - 1], svd->s[j]);
    DenseMatrix us = svd->u;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < r; ++j) us.at(i, j) *= svd->s[j];
    }
    ExpectNear(MatMul(us, svd->vt), a, 1e-12);
    DenseMatrix eye(r, r);
    for (int64_t j = 0; j < r; ++j) eye.at(j, j) = 1;
    ExpectNear(MatMulTransA(svd->u, svd->u), eye, 1e-12);
  }
}

// polar(A) is orthogonal, and polar(Q) = Q for an orthogonal Q.
TEST(DenseMatrixTest, PolarFactorIsOrthogonalAndFixesOrthogonalMatrices) {
  std::mt19937 rng(3);
  auto p = PolarFactor(Random(5, 5, rng));
  ASSERT_TRUE(p.ok());
  DenseMatrix eye(5, 5);
  for (int64_t j = 0; j < 5; ++j) eye.at(j, j) = 1;
  ExpectNear(MatMulTransA(*p, *p), eye, 1e-12);
  auto again = PolarFactor(*p);
  ASSERT_TRUE(again.ok());
  ExpectNear(*again, *p, 1e-12);
}

}  // namespace
}  // namespace mergeserve
