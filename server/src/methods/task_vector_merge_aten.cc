// ATen backend of the task-vector family: whole-tensor ops that run on CPU or
// CUDA. Per-tensor selection uses kthvalue + cumsum (an implementation
// independent of the fused radix select, which tests compare it with).
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/kthvalue.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/philox.h"
#include "mergeserve/base/status_macros.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {
namespace {

// Exact top-k of |a| (flat) with ties broken by lower index; all ties kept
// when !exact.
at::Tensor TopKMask(const at::Tensor& mag, int64_t k, bool exact) {
  const int64_t n = mag.numel();
  if (k <= 0) return at::zeros({n}, mag.options().dtype(at::kBool));
  if (k >= n) return at::ones({n}, mag.options().dtype(at::kBool));
  const at::Tensor v = std::get<0>(at::kthvalue(mag, n - k + 1));
  if (!exact) return mag >= v;
  const at::Tensor gt = mag > v;
  const at::Tensor eq = mag == v;
  const int64_t need = k - gt.sum().item<int64_t>();
  return gt.logical_or(eq.logical_and(eq.cumsum(0) <= need));
}

// A TopSet computed elsewhere (model scope), applied to this tensor.
at::Tensor TopSetMask(const TopSet& set, const at::Tensor& mag) {
  const int64_t n = mag.numel();
  switch (set.kind) {
    case TopSet::kNone:
      return at::zeros({n}, mag.options().dtype(at::kBool));
    case TopSet::kAll:
      return at::ones({n}, mag.options().dtype(at::kBool));
    case TopSet::kThreshold:
      break;
  }
  if (set.all_ties) return mag >= set.value;
  const at::Tensor eq = mag == set.value;
  return (mag > set.value)
      .logical_or(eq.logical_and(eq.cumsum(0) <= set.tensor_ties));
}

// Counter-based uniforms, generated on the CPU so every device sees the same
// numbers.
at::Tensor Uniforms(uint64_t seed, const std::string& tensor, int model,
                    int64_t n, const at::Device& device) {
  at::Tensor u = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  ElementRandom(seed, tensor, model).Fill(0, n, u.data_ptr<float>());
  return u.to(device);
}

// Copies the merged update (any device) to host memory.
void KeepUpdate(const at::Tensor& acc, float* dst) {
  const at::Tensor h = acc.to(at::kCPU).to(at::kFloat).contiguous();
  std::copy_n(h.data_ptr<float>(), h.numel(), dst);
}

}  // namespace

absl::Status TaskVectorMerge::MergeAten(const MergePlan& plan,
                                        const PlannedTensor& t,
                                        const TensorParams& p, ExecContext& ctx,
                                        TensorSink* out,
                                        float* keep_update) const {
  return CatchAten("merge", [&]() -> absl::Status {
    const std::string dev_name =
        ctx.backend == Backend::kAten ? ctx.device : std::string("cpu");
    const at::Device dev(dev_name);
    const size_t n = experts_.size();
    const int64_t numel = t.numel;
    at::Tensor base;
    if (opts_.use_base) {
      MS_ASSIGN_OR_RETURN(
          base, LoadChecked(t.base, dev_name, *plan.config().base_model));
      base = base.reshape({numel});
    }
    std::vector<at::Tensor> u(n);
    for (size_t k = 0; k < n; ++k) {
      const int m = experts_[k];
      MS_ASSIGN_OR_RETURN(
          at::Tensor x, LoadChecked(t.models[static_cast<size_t>(m)], dev_name,
                                    plan.models()[static_cast<size_t>(m)].ref));
      at::Tensor tau =
          opts_.use_base ? x.reshape({numel}) - base : x.reshape({numel});
      const double d = p.density[k];
      at::Tensor kept = tau;
      at::Tensor inverse_scale;  // per element (della) when set
      switch (opts_.sparsify) {
        case Sparsify::kNone:
          break;
        case Sparsify::kMagnitude:
        case Sparsify::kOutliers: {
          if (d >= 1) break;
          const at::Tensor mag = tau.abs();
          at::Tensor mask;
          if (opts_.scope == TrimScope::kModel) {
            mask = TopSetMask(p.keep[k], mag);
          } else {
            const TrimCounts c = ComputeTrimCounts(opts_, d, p.gamma[k], numel);
            const bool exact = opts_.keep == KeepMode::kExact ||
                               opts_.sparsify == Sparsify::kOutliers;
            mask = TopKMask(mag, c.keep, exact);
            if (c.drop > 0) {
              mask =
                  mask.logical_and(TopKMask(mag, c.drop, true).logical_not());
            }
          }
          kept = tau * mask;
          break;
        }
        case Sparsify::kRandom: {
          if (d >= 1) break;
          const at::Tensor r = Uniforms(opts_.seed, t.name, m, numel, dev);
          kept = tau * (r < static_cast<float>(d));
          break;
        }
        case Sparsify::kRankSampling: {
          if (d >= 1) break;
          // Rank |τ| within each row (stable: lower index ranks lower among
          // equals); keep probability rises linearly over [d-ε, d+ε].
          const int64_t rows = t.shape.size() >= 2 ? t.shape[0] : 1;
          const int64_t cols = numel / std::max<int64_t>(rows, 1);
          const at::Tensor mag = tau.abs().reshape({rows, cols});
          const at::Tensor order =
              std::get<1>(at::sort(mag, /*stable=*/true, /*dim=*/1,
                                   /*descending=*/false));
          at::Tensor rank = at::empty_like(mag);
          rank.scatter_(1, order,
                        at::arange(cols, mag.options())
                            .unsqueeze(0)
                            .expand({rows, cols})
                            .contiguous());
          const double eps = p.epsilon[k];
          at::Tensor prob =
              cols > 1 ? (rank / static_cast<double>(cols - 1)) * (2 * eps) +
                             (d - eps)
                       : at::full_like(rank, d);
          prob = prob.reshape({numel});
          const at::Tensor r = Uniforms(opts_.seed, t.name, m, numel, dev);
          const at::Tensor keep = r < prob;
          kept = tau * keep;
          inverse_scale =
              at::where(keep, prob.reciprocal(), at::zeros_like(prob));
          break;
        }
      }
      // Rescale what survived.
      if (opts_.sparsify != Sparsify::kNone && d < 1) {
        if (opts_.rescale == Rescale::kInverse) {
          if (inverse_scale.defined()) {
            kept = tau * inverse_scale;
          } else if (d > 0) {
            kept = kept * static_cast<float>(1.0 / d);
          }
        } else if (opts_.rescale == Rescale::kL1) {
          const double all = tau.abs().sum(at::kDouble).item<double>();
          const double sum_kept = kept.abs().sum(at::kDouble).item<double>();
          if (all >= 1e-7 && sum_kept >= 1e-7) {
            kept = kept * static_cast<float>(all / sum_kept);
          }
        }
      }
      u[k] = kept;
    }

    at::Tensor result;
    if (opts_.consensus == Consensus::kNone) {
      at::Tensor acc = u[0] * static_cast<float>(p.weight[0]);
      float wsum = static_cast<float>(p.weight[0]);
      for (size_t k = 1; k < n; ++k) {
        acc = acc + u[k] * static_cast<float>(p.weight[k]);
        wsum += static_cast<float>(p.weight[k]);
      }
      if (opts_.divisor == Divisor::kWeight) {
        acc = acc / (std::fabs(wsum) < 1e-8f ? 1.f : wsum);
      } else if (opts_.divisor == Divisor::kCount) {
        acc = acc * (1.f / static_cast<float>(n));
      }
      if (keep_update != nullptr) KeepUpdate(acc, keep_update);
      result = opts_.use_base ? base + acc * p.lambda : acc;
    } else {
      std::vector<at::Tensor> e(n);
      at::Tensor votes;
      for (size_t k = 0; k < n; ++k) {
        e[k] =
            opts_.sign_weighted ? u[k] * static_cast<float>(p.weight[k]) : u[k];
        const at::Tensor v =
            opts_.consensus == Consensus::kSum ? e[k] : e[k].sign();
        votes = k == 0 ? v : votes + v;
      }
      float tie = 1.f;
      if (opts_.zero_sign == ZeroSign::kMajority) {
        int majority = p.majority;
        if (opts_.scope == TrimScope::kTensor) {
          majority = votes.sign().sum().item<int64_t>() > 0 ? 1 : -1;
        }
        tie = majority > 0 ? 1.f : -1.f;
      }
      const at::Tensor sign =
          at::where(votes > 0, at::ones_like(votes),
                    at::where(votes < 0, -at::ones_like(votes),
                              at::full_like(votes, tie)));
      at::Tensor acc, den;
      for (size_t k = 0; k < n; ++k) {
        const at::Tensor agree = (e[k] * sign) > 0;
        const float wk = static_cast<float>(p.weight[k]);
        const at::Tensor contrib =
            at::where(agree, u[k] * wk, at::zeros_like(u[k]));
        const at::Tensor dk = agree.to(at::kFloat) *
                              (opts_.divisor == Divisor::kCount ? 1.f : wk);
        acc = k == 0 ? contrib : acc + contrib;
        den = k == 0 ? dk : den + dk;
      }
      switch (opts_.divisor) {
        case Divisor::kNone:
          break;
        case Divisor::kWeight:
          acc = acc / at::where(den == 0, at::ones_like(den), den);
          break;
        case Divisor::kCount:
          acc = acc / den.clamp_min(1.f);
          break;
      }
      if (keep_update != nullptr) KeepUpdate(acc, keep_update);
      result = base + acc * p.lambda;
    }
    if (out == nullptr) return absl::OkStatus();
    return WriteToSink(result, *out);
  });
}

namespace aten {
absl::Status MergeTaskVectors(const TaskVectorMerge& method,
                              const MergePlan& plan, const PlannedTensor& t,
                              const TensorParams& p, ExecContext& ctx,
                              TensorSink* out, float* keep_update) {
  return method.MergeAten(plan, t, p, ctx, out, keep_update);
}
}  // namespace aten

}  // namespace mergeserve
