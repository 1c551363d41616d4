#include "methods/matrix_merge.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"

namespace mergeserve {
absl::StatusOr<DenseMatrix> SumOfTaus(const MatrixInputs& in) {
  DenseMatrix sum(in.rows, in.cols);
  for (int i = 0; i < in.count; ++i) {
    MS_ASSIGN_OR_RETURN(DenseMatrix tau, in.tau(i));
    for (size_t j = 0; j < sum.data.size(); ++j) sum.data[j] += tau.data[j];
  }
  return sum;
}

absl::StatusOr<at::Tensor> SumOfTausAten(const MatrixInputs& in,
                                         const std::string& device) {
  at::Tensor sum = at::zeros(
      {in.rows, in.cols},
      at::TensorOptions().dtype(at::kDouble).device(at::Device(device)));
  for (int i = 0; i < in.count; ++i) {
    MS_ASSIGN_OR_RETURN(DenseMatrix tau, in.tau(i));
    sum.add_(ToAten(tau, device));
  }
  return sum;
}

StackedTriplets::StackedTriplets(int64_t rows, int64_t cols)
    : u(rows, std::min(rows, cols)),
      vt(std::min(rows, cols), cols),
      s(static_cast<size_t>(std::min(rows, cols)), 0.0) {}

void StackedTriplets::Put(const ThinSvd& svd, int64_t count, int64_t slot) {
  for (int64_t j = 0; j < count; ++j) {
    for (int64_t row = 0; row < u.rows; ++row) {
      u.at(row, slot + j) = svd.u.at(row, j);
    }
    s[static_cast<size_t>(slot + j)] = svd.s[static_cast<size_t>(j)];
    std::copy_n(svd.vt.row(j), vt.cols, vt.row(slot + j));
  }
}

absl::StatusOr<DenseMatrix> StackedTriplets::Rebuild(bool flat) const {
  MS_ASSIGN_OR_RETURN(DenseMatrix pu, PolarFactor(u));
  MS_ASSIGN_OR_RETURN(DenseMatrix pv, PolarFactor(vt));
  if (flat) {
    const double mean = s.empty() ? 0.0
                                  : std::accumulate(s.begin(), s.end(), 0.0) /
                                        static_cast<double>(s.size());
    MS_ASSIGN_OR_RETURN(DenseMatrix out, MatMul(pu, pv));
    for (double& v : out.data) v *= mean;
    return out;
  }
  for (int64_t row = 0; row < pu.rows; ++row) {
    for (int64_t j = 0; j < pu.cols; ++j) {
      pu.at(row, j) *= s[static_cast<size_t>(j)];
    }
  }
  return MatMul(pu, pv);
}

at::Tensor ToAten(const DenseMatrix& m, const std::string& device) {
  return at::from_blob(const_cast<double*>(m.data.data()), {m.rows, m.cols},
                       at::TensorOptions().dtype(at::kDouble))
      .to(at::Device(device), /*non_blocking=*/false, /*copy=*/true);
}

DenseMatrix FromAten(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU).to(at::kDouble).contiguous();
  DenseMatrix m(c.size(0), c.size(1));
  std::copy_n(c.data_ptr<double>(), m.data.size(), m.data.data());
  return m;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> SvdAten(const at::Tensor& a) {
  try {
    return at::linalg_svd(a, /*full_matrices=*/false);
  } catch (const c10::Error& e) {
    if (std::string(e.what()).find("converge") == std::string::npos) throw;
  }
  absl::StatusOr<ThinSvd> svd = ComputeThinSvd(FromAten(a));
  if (!svd.ok()) throw std::runtime_error(std::string(svd.status().message()));
  const std::string device = a.device().str();
  const at::Tensor s =
      at::from_blob(svd->s.data(), {static_cast<int64_t>(svd->s.size())},
                    at::TensorOptions().dtype(at::kDouble))
          .to(at::Device(device), a.scalar_type(), false, /*copy=*/true);
  return {ToAten(svd->u, device).to(a.scalar_type()), s,
          ToAten(svd->vt, device).to(a.scalar_type())};
}

at::Tensor PolarAten(const at::Tensor& a) {
  auto [u, s, vh] = SvdAten(a);
  return at::matmul(u, vh);
}

absl::StatusOr<std::vector<const PlannedTensor*>> PlanMatrices(
    const MergePlan& plan) {
  std::vector<const PlannedTensor*> out;
  for (const PlannedTensor& t : plan.tensors()) {
    if (!t.merge || t.shape.size() != 2) continue;
    MS_ASSIGN_OR_RETURN(double svd, plan.Number("svd", -1, t, 1.0));
    if (svd != 0) out.push_back(&t);
  }
  return out;
}

absl::Status MatrixMerge::Prepare(const MergePlan& plan, ExecContext&) {
  if (plan.base() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(method_, " needs base_model"));
  }
  experts_ = NonBaseModels(plan);
  if (experts_.empty()) {
    return absl::InvalidArgumentError("no models to merge besides the base");
  }
  return PrepareMethod(plan, static_cast<int>(experts_.size()));
}

absl::StatusOr<bool> MatrixMerge::IsMatrix(const MergePlan& plan,
                                           const PlannedTensor& t) const {
  if (t.shape.size() != 2) return false;
  MS_ASSIGN_OR_RETURN(double svd, plan.Number("svd", -1, t, 1.0));
  return svd != 0;
}

absl::Status MatrixMerge::MergeTensor(const MergePlan& plan,
                                      const PlannedTensor& t, ExecContext& ctx,
                                      TensorSink& out) {
  const size_t n = experts_.size();
  std::vector<double> weight(n);
  for (size_t k = 0; k < n; ++k) {
    MS_ASSIGN_OR_RETURN(weight[k], plan.Number("weight", experts_[k], t, 1.0));
  }
  MS_ASSIGN_OR_RETURN(const double lambda, plan.Number("lambda", -1, t, 1.0));
  MS_ASSIGN_OR_RETURN(const bool matrix, IsMatrix(plan, t));
  MS_ASSIGN_OR_RETURN(std::vector<float> base,
                      LoadWholeF32(t.base, t.name, *plan.config().base_model));
  const auto load_tau = [&](size_t k) -> absl::StatusOr<std::vector<double>> {
    const int m = experts_[k];
    MS_ASSIGN_OR_RETURN(
        std::vector<float> x,
        LoadWholeF32(t.models[static_cast<size_t>(m)], t.name,
                     plan.models()[static_cast<size_t>(m)].ref));
    std::vector<double> tau(x.size());
    for (size_t j = 0; j < x.size(); ++j) {
      tau[j] = weight[k] * (static_cast<double>(x[j]) - base[j]);
    }
    return tau;
  };

  std::shared_ptr<const std::vector<double>> merged;
  if (!matrix) {
    // Everything that is not a matrix: the mean of the task vectors.
    auto mean = std::make_shared<std::vector<double>>(base.size(), 0.0);
    for (size_t k = 0; k < n; ++k) {
      MS_ASSIGN_OR_RETURN(std::vector<double> tau, load_tau(k));
      for (size_t j = 0; j < tau.size(); ++j) (*mean)[j] += tau[j];
    }
    for (double& v : *mean) v /= static_cast<double>(n);
    merged = std::move(mean);
  } else {
    // τ_m does not depend on λ: a λ sweep factorises each matrix once.
    std::string key;
    if (ctx.cache != nullptr && !ctx.base_digest.empty()) {
      key = absl::StrCat("matrix|", method_, "|", OptionsKey(), "|",
                         ctx.backend == Backend::kAten ? ctx.device : "lapack",
                         "|", ctx.base_digest, "|", t.name);
      for (size_t k = 0; k < n; ++k) {
        const std::string& d =
            ctx.model_digests[static_cast<size_t>(experts_[k])];
        if (d.empty()) {
          key.clear();
          break;
        }
        absl::StrAppend(&key, "|", d, absl::StrFormat(":%a", weight[k]));
      }
    }
    if (!key.empty()) merged = ctx.cache->GetAs<std::vector<double>>(key);
    if (merged == nullptr) {
      MatrixInputs in;
      in.name = t.name;
      in.rows = t.shape[0];
      in.cols = t.shape[1];
      in.count = static_cast<int>(n);
      in.tau = [&](int k) -> absl::StatusOr<DenseMatrix> {
        MS_ASSIGN_OR_RETURN(std::vector<double> tau,
                            load_tau(static_cast<size_t>(k)));
        DenseMatrix m;
        m.rows = in.rows;
        m.cols = in.cols;
        m.data = std::move(tau);
        return m;
      };
      absl::StatusOr<DenseMatrix> result = ctx.backend == Backend::kAten
                                               ? MergeMatrixAten(in, ctx.device)
                                               : MergeMatrixLapack(in);
      if (!result.ok()) {
        return absl::Status(result.status().code(),
                            absl::StrCat(method_, ": tensor '", t.name,
                                         "': ", result.status().message()));
      }
      auto value =
          std::make_shared<std::vector<double>>(std::move(result->data));
      const int64_t bytes =
          static_cast<int64_t>(value->size() * sizeof(double));
      if (!key.empty() && bytes <= ctx.cache->capacity_bytes() / 4) {
        ctx.cache->Put(key, value, bytes + static_cast<int64_t>(key.size()));
      }
      merged = std::move(value);
    }
  }
  if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");

  // θ = θ0 + λ·τ_m, written a piece at a time.
  constexpr size_t kPiece = size_t{1} << 16;
  std::vector<float> piece(std::min(kPiece, base.size()));
  for (size_t begin = 0; begin < base.size(); begin += kPiece) {
    const size_t cnt = std::min(kPiece, base.size() - begin);
    for (size_t j = 0; j < cnt; ++j) {
      piece[j] = static_cast<float>(static_cast<double>(base[begin + j]) +
                                    lambda * (*merged)[begin + j]);
    }
    MS_RETURN_IF_ERROR(out.WriteF32(static_cast<int64_t>(begin), piece.data(),
                                    static_cast<int64_t>(cnt)));
  }
  return absl::OkStatus();
}

}  // namespace mergeserve
