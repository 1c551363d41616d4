#include "engine/dense_matrix.h"

#include <dlfcn.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

// Fortran LAPACK/BLAS (column-major, arguments by pointer).
struct Lapack {
  void (*dgesdd)(const char* jobz, const int* m, const int* n, double* a,
                 const int* lda, double* s, double* u, const int* ldu,
                 double* vt, const int* ldvt, double* work, const int* lwork,
                 int* iwork, int* info);
  void (*dgesvd)(const char* jobu, const char* jobvt, const int* m,
                 const int* n, double* a, const int* lda, double* s, double* u,
                 const int* ldu, double* vt, const int* ldvt, double* work,
                 const int* lwork, int* info);
  void (*dgemm)(const char* transa, const char* transb, const int* m,
                const int* n, const int* k, const double* alpha,
                const double* a, const int* lda, const double* b,
                const int* ldb, const double* beta, double* c, const int* ldc);
};

// LAPACK is opened on first use, not linked: OpenBLAS starts its threads
// when it is loaded, and they spin (sched_yield) for about 0.1 s of CPU,
// taken from every merge, though only the matrix methods and `analyze`
// call it. liblapack.so.3 is the name Debian's alternatives point at
// OpenBLAS (libopenblas0-pthread) or the reference LAPACK; the library
// CMake found is the fallback.
absl::StatusOr<const Lapack*> LoadLapack() {
  static const absl::StatusOr<const Lapack*> loaded =
      []() -> absl::StatusOr<const Lapack*> {
    std::string errors;
    for (const char* name : {"liblapack.so.3", MS_LAPACK_LIBRARY}) {
      void* lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib == nullptr) {
        absl::StrAppend(&errors, errors.empty() ? "" : "; ", ::dlerror());
        continue;
      }
      static Lapack l;
      l.dgesdd = reinterpret_cast<decltype(l.dgesdd)>(::dlsym(lib, "dgesdd_"));
      l.dgesvd = reinterpret_cast<decltype(l.dgesvd)>(::dlsym(lib, "dgesvd_"));
      l.dgemm = reinterpret_cast<decltype(l.dgemm)>(::dlsym(lib, "dgemm_"));
      if (l.dgesdd != nullptr && l.dgesvd != nullptr && l.dgemm != nullptr) {
        return &l;  // kept open for the life of the process
      }
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", name,
                      " lacks dgesdd_, dgesvd_ or dgemm_");
      ::dlclose(lib);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load LAPACK for the matrix methods: ", errors));
  }();
  return loaded;
}

}  // namespace

absl::StatusOr<ThinSvd> ComputeThinSvd(const DenseMatrix& a) {
  const int64_t m = a.rows, n = a.cols, r = std::min(m, n);
  ThinSvd out;
  out.u = DenseMatrix(m, r);
  out.vt = DenseMatrix(r, n);
  out.s.assign(static_cast<size_t>(r), 0.0);
  if (r == 0) return out;
  if (m > INT32_MAX / std::max<int64_t>(n, 1)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("matrix of ", m, "x", n, " is too large for LAPACK"));
  }
  // The same call torch.linalg.svd makes on CPU (gesdd, jobz 'S', on a
  // column-major copy of A): on a rank-deficient matrix the singular
  // vectors of its null space are not unique, and the methods' polar
  // factors and flat spectra keep them (the authors' code does), so only
  // the same LAPACK call on the same layout gives the authors' completion.
  std::vector<double> col(a.data.size());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) col[j * m + i] = a.at(i, j);
  }
  const int M = static_cast<int>(m), N = static_cast<int>(n),
            R = static_cast<int>(r);
  std::vector<double> u(static_cast<size_t>(m * r)),
      vt(static_cast<size_t>(r * n));
  std::vector<int> iwork(static_cast<size_t>(8 * r));
  int info = 0, lwork = -1;
  double query = 0;
  const char jobz = 'S';
  MS_ASSIGN_OR_RETURN(const Lapack* lapack, LoadLapack());
  lapack->dgesdd(&jobz, &M, &N, col.data(), &M, out.s.data(), u.data(), &M,
                 vt.data(), &R, &query, &lwork, iwork.data(), &info);
  if (info != 0) {
    return absl::InternalError(absl::StrCat("dgesdd workspace query: ", info));
  }
  lwork = static_cast<int>(query);
  std::vector<double> work(static_cast<size_t>(std::max(lwork, 1)));
  lapack->dgesdd(&jobz, &M, &N, col.data(), &M, out.s.data(), u.data(), &M,
                 vt.data(), &R, work.data(), &lwork, iwork.data(), &info);
  if (info < 0) {
    return absl::InternalError(absl::StrCat("dgesdd argument ", -info));
  }
  if (info > 0) {
    // gesdd's divide and conquer fails on some ill-conditioned inputs (a
    // task vector with its common subspace projected out); QR iteration
    // (gesvd) is slower and converges where it does not.
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) col[j * m + i] = a.at(i, j);
    }
    lwork = -1;
    lapack->dgesvd(&jobz, &jobz, &M, &N, col.data(), &M, out.s.data(), u.data(),
                   &M, vt.data(), &R, &query, &lwork, &info);
    lwork = static_cast<int>(query);
    work.assign(static_cast<size_t>(std::max(lwork, 1)), 0.0);
    if (info == 0) {
      lapack->dgesvd(&jobz, &jobz, &M, &N, col.data(), &M, out.s.data(),
                     u.data(), &M, vt.data(), &R, work.data(), &lwork, &info);
    }
    if (info != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("SVD of a ", m, "x", n,
                       " matrix did not converge (dgesdd and "
                       "dgesvd: ",
                       info, ")"));
    }
  }
  // Column-major U (m×r) and VT (r×n) to row-major.
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < r; ++j) out.u.at(i, j) = u[j * m + i];
  }
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < n; ++j) out.vt.at(i, j) = vt[j * r + i];
  }
  return out;
}

namespace {

// Row-major C (m×n) = op(A)·B via the column-major identity Cᵀ = Bᵀ·op(A)ᵀ.
absl::StatusOr<DenseMatrix> Gemm(const DenseMatrix& a, bool trans_a,
                                 const DenseMatrix& b) {
  const int64_t m = trans_a ? a.cols : a.rows;
  const int64_t k = trans_a ? a.rows : a.cols;
  const int64_t n = b.cols;
  DenseMatrix c(m, n);
  if (m == 0 || n == 0 || k == 0) return c;
  const int M = static_cast<int>(n), N = static_cast<int>(m),
            K = static_cast<int>(k);
  const int ldb = static_cast<int>(b.cols), lda = static_cast<int>(a.cols);
  const double one = 1, zero = 0;
  const char tb = 'N', ta = trans_a ? 'T' : 'N';
  MS_ASSIGN_OR_RETURN(const Lapack* lapack, LoadLapack());
  lapack->dgemm(&tb, &ta, &M, &N, &K, &one, b.data.data(), &ldb, a.data.data(),
                &lda, &zero, c.data.data(), &M);
  return c;
}

}  // namespace

absl::StatusOr<DenseMatrix> MatMul(const DenseMatrix& a, const DenseMatrix& b) {
  return Gemm(a, false, b);
}

absl::StatusOr<DenseMatrix> MatMulTransA(const DenseMatrix& a,
                                         const DenseMatrix& b) {
  return Gemm(a, true, b);
}

absl::StatusOr<DenseMatrix> PolarFactor(const DenseMatrix& a) {
  auto svd = ComputeThinSvd(a);
  if (!svd.ok()) return svd.status();
  return MatMul(svd->u, svd->vt);
}

}  // namespace mergeserve
