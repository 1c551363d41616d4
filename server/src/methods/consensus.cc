// consensus_ta / consensus_ties — TALL-mask consensus (Wang et al., ICML'24,
// "Localizing Task Information for Improved Model Merging and
// Compression"), following the authors' nik-dim/tall_masks (method
// `consensus`): the multi-task vector τ_MTL (task arithmetic's sum, or TIES
// with the paper preset and the disjoint sum) keeps only the entries that
// at least k tasks' TALL masks
//   m_t = |θ0 − θt| > λ_t·|(θ0 + τ_MTL) − θt|
// mark as theirs. θ = θ0 + λ·(consensus ⊙ τ_MTL).
//
// τ_MTL comes from the task-vector family on the merge's backend (and from
// the server's cache of merged updates, so a λ sweep does not recompute
// it); the masks are one streamed pass over the base and the experts.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/first_error.h"
#include "mergeserve/base/status_macros.h"
#include "methods/method_util.h"
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {
namespace {

class ConsensusMethod : public MergeMethod {
 public:
  ConsensusMethod(std::string name, TaskVectorKind kind)
      : name_(std::move(name)), kind_(kind) {}

  absl::Status Prepare(const MergePlan& plan, ExecContext& ctx) override {
    if (plan.base() == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_, " needs base_model"));
    }
    // The authors' method has no per-task weights.
    bool weighted = plan.Has("weight");
    for (const PlannedModel& m : plan.models()) {
      weighted = weighted || m.parameters.count("weight") > 0;
    }
    if (weighted) {
      return absl::InvalidArgumentError(
          absl::StrCat(name_,
                       " does not take 'weight' (TALL-mask consensus has none; "
                       "use tall_mask_lambda, consensus_k and lambda)"));
    }
    MS_ASSIGN_OR_RETURN(const double k, plan.GlobalNumber("consensus_k", 2));
    if (k < 0 || k != std::floor(k)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name_, ": consensus_k must be a whole number >= 0, got ", k));
    }
    k_ = static_cast<int>(std::min(k, 1e6));
    experts_ = NonBaseModels(plan);
    inner_ = std::make_unique<TaskVectorMerge>(kind_);
    return inner_->Prepare(plan, ctx);
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    const size_t n = experts_.size();
    MS_ASSIGN_OR_RETURN(const double lambda, plan.Number("lambda", -1, t, 1.0));
    std::vector<float> mask_lambda(n);
    for (size_t i = 0; i < n; ++i) {
      MS_ASSIGN_OR_RETURN(double l,
                          plan.Number("tall_mask_lambda", experts_[i], t, 0.6));
      mask_lambda[i] = static_cast<float>(l);
    }
    std::vector<float> update(static_cast<size_t>(t.numel));
    MS_RETURN_IF_ERROR(inner_->MergedUpdate(plan, t, ctx, update.data()));

    const int64_t chunk = ctx.chunk_elems;
    struct Scratch {
      std::vector<float> base, model, out;
      std::vector<int> votes;
    };
    std::vector<Scratch> scratch(static_cast<size_t>(ctx.pool->num_threads()));
    FirstError error;
    const float lam = static_cast<float>(lambda);
    const absl::Status staged = ForEachStagedChunk(
        *ctx.pool, ctx.staging, t, /*base=*/true, experts_, chunk,
        [&](int64_t ci, int w, const PlannedTensor& in) {
          if (error.failed() || ctx.is_cancelled()) return;
          Scratch& s = scratch[static_cast<size_t>(w)];
          s.base.resize(static_cast<size_t>(chunk));
          s.model.resize(static_cast<size_t>(chunk));
          s.out.resize(static_cast<size_t>(chunk));
          s.votes.assign(static_cast<size_t>(chunk), 0);
          const int64_t begin = ci * chunk;
          const int64_t cnt = std::min(chunk, t.numel - begin);
          const float* q = update.data() + begin;
          if (!LoadDelta(in.base, begin, cnt, nullptr, s.base.data())) {
            error.Set(NonFiniteError(t.name, *plan.config().base_model));
            return;
          }
          for (size_t i = 0; i < n; ++i) {
            const int m = experts_[i];
            if (!LoadDelta(in.models[static_cast<size_t>(m)], begin, cnt,
                           nullptr, s.model.data())) {
              error.Set(NonFiniteError(
                  t.name, plan.models()[static_cast<size_t>(m)].ref));
              return;
            }
            // fp32 and in the authors' order: θ0 + τ_MTL is rounded first.
            const float lt = mask_lambda[i];
            for (int64_t j = 0; j < cnt; ++j) {
              const float x = s.model[static_cast<size_t>(j)];
              const float b = s.base[static_cast<size_t>(j)];
              const float merged = b + q[j];
              s.votes[static_cast<size_t>(j)] +=
                  std::fabs(b - x) > lt * std::fabs(merged - x) ? 1 : 0;
            }
          }
          for (int64_t j = 0; j < cnt; ++j) {
            const float kept = s.votes[static_cast<size_t>(j)] >= k_ ? q[j] : 0;
            s.out[static_cast<size_t>(j)] =
                s.base[static_cast<size_t>(j)] + lam * kept;
          }
          absl::Status st = out.WriteF32(begin, s.out.data(), cnt);
          if (!st.ok()) error.Set(std::move(st));
        });
    MS_RETURN_IF_ERROR(staged);
    MS_RETURN_IF_ERROR(error.status());
    if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
    return absl::OkStatus();
  }

 private:
  const std::string name_;
  const TaskVectorKind kind_;
  int k_ = 2;
  std::vector<int> experts_;
  std::unique_ptr<TaskVectorMerge> inner_;
};

}  // namespace

std::unique_ptr<MergeMethod> NewConsensusTaMethod() {
  // τ_MTL = Σ τ_i, unscaled (the authors' task arithmetic with no trim).
  return std::make_unique<ConsensusMethod>("consensus_ta", TaskVectorKind{});
}

std::unique_ptr<MergeMethod> NewConsensusTiesMethod() {
  // TIES with the paper preset (whole-model trim at density 0.2, threshold
  // keep, unweighted sum election with the majority fallback) and the
  // disjoint sum (the authors' `dis-sum`).
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kMagnitude;
  kind.consensus = Consensus::kSum;
  kind.default_semantics = Semantics::kPaper;
  kind.default_divisor_none = true;
  kind.default_density = 0.2;
  return std::make_unique<ConsensusMethod>("consensus_ties", kind);
}

}  // namespace mergeserve
