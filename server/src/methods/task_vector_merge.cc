#include "methods/task_vector_merge.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/first_error.h"
#include "mergeserve/base/cpu_dispatch.h"
#include "mergeserve/base/huge_buffer.h"
#include "mergeserve/base/philox.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/diagnostics.h"
#include "mergeserve/engine/magnitude_selector.h"
#include "methods/abs_sum.h"
#include "methods/merge_kernels.h"
#include "methods/model_trim.h"
#include "methods/rank_sampling.h"
#include "methods/tie_ledger.h"

namespace mergeserve {
namespace {

template <typename E>
absl::StatusOr<E> Choose(const MergePlan& plan, const std::string& key,
                         E fallback,
                         const std::vector<std::pair<const char*, E>>& names) {
  if (!plan.Has(key)) return fallback;
  MS_ASSIGN_OR_RETURN(std::string v, plan.String(key, ""));
  std::string known;
  for (const auto& [name, value] : names) {
    if (v == name) return value;
    absl::StrAppend(&known, known.empty() ? "" : " | ", name);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "parameter '", key, "': unknown value '", v, "' (", known, ")"));
}

// Elements per tile of the election and merge kernels: the eight arrays a
// tile of four experts uses (τ, votes, sums, weights, q) take 16 KiB, half
// of a 32 KiB L1 data cache.
constexpr int64_t kMergeTile = 512;

// Chunk-local scratch of one worker: arrays of a chunk each (tv: one per
// expert, Tv(k)), carved from one allocation so that each starts a cache
// line further past a 4 KiB boundary than the last. Chunks are multiples
// of 4 KiB: arrays a chunk apart would share L1 sets, and a kernel's store
// to one would seem to alias its next load from another (4K aliasing).
struct Buffers {
  std::vector<float> arena;
  float *base = nullptr, *rnd = nullptr, *mask = nullptr, *sum = nullptr,
        *acc = nullptr, *den = nullptr, *out = nullptr, *tv = nullptr;
  size_t chunk = 0, experts = 0, tv_stride = 0;
  std::vector<float> raw;  // untrimmed τ, only when collecting diagnostics
  RankScratch ranking;     // della's per-row ranking
  // ElectAndMerge's per-expert arguments.
  std::vector<const float*> tvs;
  std::vector<float> ew, w, d;
  Buffers() = default;
  Buffers(const Buffers&) = delete;  // the pointers are into its own arena
  Buffers& operator=(const Buffers&) = delete;
  Buffers(Buffers&&) = default;  // a vector's move keeps its data
  Buffers& operator=(Buffers&&) = default;
  float* Tv(size_t k) const { return tv + k * tv_stride; }
  void Reserve(size_t n_experts, size_t n) {
    if (chunk >= n && experts >= n_experts) return;
    constexpr size_t kLine = 16;  // floats per 64-byte line
    const size_t stride = (n + kLine - 1) / kLine * kLine + kLine;
    arena.assign((7 + n_experts) * stride + 2 * kLine, 0);
    // From a line boundary: a 16-float load then never spans two lines.
    float* at = arena.data();
    while (reinterpret_cast<uintptr_t>(at) % 64 != 0) ++at;
    for (float** p : {&base, &rnd, &mask, &sum, &acc, &den, &out}) {
      *p = at;
      at += stride;
    }
    tv = at;
    tv_stride = stride;
    chunk = n;
    experts = n_experts;
  }
};

// Cached per-expert selections of one tensor: its keep and drop sets
// (tensor scope; model scope's are in model_trim.cc).
struct CachedTrim {
  TopSet keep, drop;
};

// Diagnostic sums of one merged chunk: kept entries and sign conflicts from
// the trimmed τ (b.tv), norms and dot products from the untrimmed (b.raw).
DiagnosticSums ChunkDiagnostics(const Buffers& b, size_t n, int64_t chunk,
                                int64_t cnt, const float* base,
                                const float* out, bool use_base) {
  DiagnosticSums d;
  d.Resize(n);
  d.numel = cnt;
  const size_t stride = static_cast<size_t>(chunk);
  for (size_t k = 0; k < n; ++k) {
    const float* u = b.Tv(k);
    const float* r = b.raw.data() + k * stride;
    int64_t kept = 0;
    double sq = 0;
    for (int64_t j = 0; j < cnt; ++j) {
      kept += u[j] != 0;
      sq += static_cast<double>(r[j]) * r[j];
    }
    d.kept[k] = kept;
    d.tau_sq[k] = sq;
  }
  size_t p = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = i + 1; k < n; ++k, ++p) {
      const float* ri = b.raw.data() + i * stride;
      const float* rk = b.raw.data() + k * stride;
      double dot = 0;
      for (int64_t j = 0; j < cnt; ++j)
        dot += static_cast<double>(ri[j]) * rk[j];
      d.dots[p] = dot;
    }
  }
  for (int64_t j = 0; j < cnt; ++j) {
    int pos = 0, neg = 0;
    for (size_t k = 0; k < n; ++k) {
      const float u = b.Tv(k)[j];
      pos += u > 0;
      neg += u < 0;
    }
    if (pos + neg >= 2) {
      ++d.multi_kept;
      if (pos > 0 && neg > 0) ++d.conflicts;
    }
    const double delta = use_base ? static_cast<double>(out[j]) - base[j] : 0.0;
    d.merged_sq += delta * delta;
  }
  return d;
}

}  // namespace

int64_t FloorCount(double fraction, int64_t n) {
  if (fraction <= 0) return 0;
  if (fraction >= 1) return n;
  return static_cast<int64_t>(std::floor(fraction * static_cast<double>(n)));
}

std::string TrimCacheKey(const ExecContext& ctx, const TaskVectorOptions& o,
                         const char* kind, int model, const std::string& tensor,
                         int64_t keep, int64_t drop) {
  // Everything a selection depends on: the inputs' content, the tensor, the
  // counts, how ties are kept and the chunking of tie lists.
  return absl::StrCat(kind, "|", ctx.base_digest, "|",
                      ctx.model_digests[static_cast<size_t>(model)], "|",
                      tensor, "|", keep, "|", drop, "|",
                      static_cast<int>(o.keep), "|",
                      static_cast<int>(o.sparsify), "|", ctx.chunk_elems);
}

TrimCounts ComputeTrimCounts(const TaskVectorOptions& o, double density,
                             double gamma, int64_t numel) {
  TrimCounts c;
  c.keep = FloorCount(density, numel);
  if (o.sparsify == Sparsify::kOutliers) {
    // mergekit's magnitude_outliers: drop the n_top largest and the n_bot
    // smallest; a too-large gamma shrinks n_top.
    int64_t top = FloorCount(gamma, numel);
    int64_t bot = numel - c.keep - top;
    if (bot < 0) {
      top += bot;
      bot = 0;
    }
    c.drop = top;
    c.keep = numel - bot;
  } else if (o.keep == KeepMode::kPaper && density > 0 && density < 1) {
    ++c.keep;  // the paper code's (n - floor(d n))-th smallest threshold
  }
  return c;
}

absl::StatusOr<TaskVectorOptions> ResolveTaskVectorOptions(
    const MergePlan& plan, const TaskVectorKind& kind) {
  TaskVectorOptions o;
  o.sparsify = kind.sparsify;
  o.consensus = kind.consensus;
  o.use_base = kind.use_base;
  MS_ASSIGN_OR_RETURN(
      Semantics sem,
      Choose<Semantics>(plan, "semantics", kind.default_semantics,
                        {{"mergekit", Semantics::kMergekit},
                         {"paper", Semantics::kPaper},
                         {"peft", Semantics::kPeft}}));
  MS_ASSIGN_OR_RETURN(bool normalize,
                      plan.Bool("normalize", kind.default_normalize));
  switch (sem) {
    case Semantics::kMergekit:
      o.scope = TrimScope::kTensor;
      o.keep = KeepMode::kExact;
      o.sign_weighted = true;
      o.zero_sign = ZeroSign::kPlus;
      o.divisor = normalize ? Divisor::kWeight : Divisor::kNone;
      break;
    case Semantics::kPaper:
      o.scope = kind.sparsify == Sparsify::kMagnitude ? TrimScope::kModel
                                                      : TrimScope::kTensor;
      o.keep = KeepMode::kPaper;
      o.sign_weighted = false;
      o.zero_sign = ZeroSign::kMajority;
      o.divisor = Divisor::kCount;
      break;
    case Semantics::kPeft:
      o.scope = TrimScope::kTensor;
      o.keep = KeepMode::kExact;
      o.sign_weighted = false;
      o.zero_sign = ZeroSign::kPlus;
      o.divisor = Divisor::kCount;
      break;
  }
  // Without an election the divisor is always the mergekit/PEFT one.
  if (o.consensus == Consensus::kNone) {
    o.divisor = normalize ? Divisor::kWeight : Divisor::kNone;
  }
  if (kind.default_divisor_none) o.divisor = Divisor::kNone;
  MS_ASSIGN_OR_RETURN(o.scope,
                      Choose<TrimScope>(plan, "trim_scope", o.scope,
                                        {{"tensor", TrimScope::kTensor},
                                         {"model", TrimScope::kModel}}));
  MS_ASSIGN_OR_RETURN(o.keep,
                      Choose<KeepMode>(plan, "keep", o.keep,
                                       {{"exact", KeepMode::kExact},
                                        {"threshold", KeepMode::kThreshold},
                                        {"paper", KeepMode::kPaper}}));
  MS_ASSIGN_OR_RETURN(o.sign_weighted,
                      plan.Bool("sign_weighted", o.sign_weighted));
  MS_ASSIGN_OR_RETURN(Consensus consensus,
                      Choose<Consensus>(plan, "consensus", o.consensus,
                                        {{"sum", Consensus::kSum},
                                         {"count", Consensus::kCount}}));
  if (consensus != o.consensus && o.consensus == Consensus::kNone) {
    return absl::InvalidArgumentError(
        "parameter 'consensus' applies only to methods with a sign election "
        "(ties, dare_ties, breadcrumbs_ties, della)");
  }
  o.consensus = consensus;
  MS_ASSIGN_OR_RETURN(o.zero_sign,
                      Choose<ZeroSign>(plan, "zero_sign", o.zero_sign,
                                       {{"plus", ZeroSign::kPlus},
                                        {"majority", ZeroSign::kMajority}}));
  MS_ASSIGN_OR_RETURN(o.divisor, Choose<Divisor>(plan, "divisor", o.divisor,
                                                 {{"weight", Divisor::kWeight},
                                                  {"count", Divisor::kCount},
                                                  {"none", Divisor::kNone}}));
  // Rescaling of what survives a random drop: 1/p by default (DARE paper,
  // PEFT); mergekit's boolean `rescale` means L1-norm matching, and applies
  // to magnitude trims too (mergekit's `magnitude` and `magnitude_outliers`
  // hand it to rescaled_masked_tensor), where it is off unless asked for.
  Rescale rescale = Rescale::kNone;
  if (o.sparsify == Sparsify::kRandom ||
      o.sparsify == Sparsify::kRankSampling) {
    // mergekit's `rescale` defaults to true for DARE and DELLA, meaning L1
    // matching; the paper and PEFT rescale by 1/p.
    rescale = sem == Semantics::kMergekit ? Rescale::kL1 : Rescale::kInverse;
  }
  if (o.sparsify != Sparsify::kNone && plan.Has("rescale")) {
    MS_ASSIGN_OR_RETURN(bool r, plan.Bool("rescale", true));
    rescale = r ? Rescale::kL1 : Rescale::kNone;
  }
  MS_ASSIGN_OR_RETURN(o.rescale,
                      Choose<Rescale>(plan, "rescale_mode", rescale,
                                      {{"inverse", Rescale::kInverse},
                                       {"l1", Rescale::kL1},
                                       {"none", Rescale::kNone}}));
  MS_ASSIGN_OR_RETURN(double seed, plan.GlobalNumber("seed", 0));
  if (seed < 0 || seed != std::floor(seed)) {
    return absl::InvalidArgumentError(
        "parameter 'seed' must be a whole number >= 0");
  }
  o.seed = static_cast<uint64_t>(seed);
  if (o.scope == TrimScope::kModel && o.sparsify != Sparsify::kMagnitude) {
    return absl::InvalidArgumentError(
        "trim_scope: model applies only to magnitude trimming (ties)");
  }
  return o;
}

absl::Status TaskVectorMerge::Prepare(const MergePlan& plan, ExecContext& ctx) {
  MS_ASSIGN_OR_RETURN(opts_, ResolveTaskVectorOptions(plan, kind_));
  tv_bytes_ = 0;
  experts_.clear();
  for (size_t i = 0; i < plan.models().size(); ++i) {
    if (opts_.use_base && plan.models()[i].is_base) continue;
    experts_.push_back(static_cast<int>(i));
  }
  if (opts_.use_base && plan.base() == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "merge_method '", plan.config().merge_method, "' needs base_model"));
  }
  if (experts_.empty()) {
    return absl::InvalidArgumentError("no models to merge besides the base");
  }
  model_keep_.clear();
  model_majority_ = 0;
  if (opts_.scope != TrimScope::kModel) return absl::OkStatus();

  // trim_scope: model — one selection over each expert's whole task vector.
  MS_ASSIGN_OR_RETURN(
      model_keep_,
      SelectModelTrim(plan, ctx, opts_, kind_.default_density, experts_));

  if (opts_.consensus != Consensus::kNone &&
      opts_.zero_sign == ZeroSign::kMajority) {
    // The paper resolves a tied election with the majority sign of the whole
    // merged vector: one census pass over the model.
    int64_t balance = 0;
    for (const PlannedTensor& t : plan.tensors()) {
      if (!t.merge) continue;
      MS_ASSIGN_OR_RETURN(TensorParams p, Resolve(plan, t, ctx));
      MS_RETURN_IF_ERROR(ComputeScale(plan, t, p, ctx));
      MS_ASSIGN_OR_RETURN(PassResult r,
                          RunPass(plan, t, p, ctx, PassMode::kCensus, nullptr));
      balance += r.balance;
    }
    model_majority_ = balance > 0 ? 1 : -1;
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorParams> TaskVectorMerge::Resolve(const MergePlan& plan,
                                                      const PlannedTensor& t,
                                                      ExecContext& ctx) const {
  TensorParams p;
  const size_t n = experts_.size();
  p.weight.resize(n);
  p.density.resize(n);
  p.gamma.resize(n);
  p.epsilon.resize(n);
  p.scale.assign(n, 1.f);
  for (size_t k = 0; k < n; ++k) {
    const int m = experts_[k];
    MS_ASSIGN_OR_RETURN(double w, plan.Number("weight", m, t, 1));
    MS_ASSIGN_OR_RETURN(double d,
                        plan.Number("density", m, t, kind_.default_density));
    MS_ASSIGN_OR_RETURN(double g, plan.Number("gamma", m, t, 0.01));
    MS_ASSIGN_OR_RETURN(double e, plan.Number("epsilon", m, t, 0.15));
    p.weight[k] = w;
    p.density[k] = d;
    p.gamma[k] = g;
    p.epsilon[k] = e;
    if (opts_.sparsify == Sparsify::kRankSampling && d < 1 &&
        (d - e < 0 || d + e > 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("della: density ", d, " +/- epsilon ", e,
                       " must stay within [0, 1] (model '",
                       plan.models()[static_cast<size_t>(m)].ref, "', tensor '",
                       t.name, "')"));
    }
  }
  MS_ASSIGN_OR_RETURN(double lambda, plan.Number("lambda", -1, t, 1));
  p.lambda = static_cast<float>(lambda);
  if (opts_.scope == TrimScope::kModel) {
    auto it = model_keep_.find(t.name);
    if (it != model_keep_.end()) p.keep = it->second;
  }
  p.majority = model_majority_;
  return p;
}

absl::Status TaskVectorMerge::SelectForTensor(const MergePlan& plan,
                                              const PlannedTensor& t,
                                              ExecContext& ctx,
                                              TensorParams& p) const {
  const size_t n = experts_.size();
  const int64_t numel = t.numel;
  p.keep.assign(n, TopSet());
  p.drop.assign(n, TopSet());
  for (auto& d : p.drop) d.kind = TopSet::kNone;
  std::vector<SelectionQuery> queries;
  // (expert, is_drop) per query.
  std::vector<std::pair<size_t, bool>> owner;
  std::vector<int64_t> keep_k(n), drop_k(n);
  for (size_t k = 0; k < n; ++k) {
    if (p.density[k] >= 1) continue;  // keep everything
    const TrimCounts c =
        ComputeTrimCounts(opts_, p.density[k], p.gamma[k], numel);
    const int64_t keep = c.keep, drop = c.drop;
    keep_k[k] = keep;
    drop_k[k] = drop;
    if (keep <= 0) {
      p.keep[k].kind = TopSet::kNone;
    } else if (keep < numel) {
      p.keep[k].kind = TopSet::kThreshold;
      queries.push_back({experts_[k], keep});
      owner.push_back({k, false});
    }
    if (drop > 0) {
      p.drop[k].kind = drop >= numel ? TopSet::kAll : TopSet::kThreshold;
      if (drop < numel) {
        queries.push_back({experts_[k], drop});
        owner.push_back({k, true});
      }
    }
  }
  // Reuse selections of earlier merges of the same checkpoints.
  std::vector<bool> from_cache(n, false);
  if (ctx.cache != nullptr) {
    for (size_t k = 0; k < n; ++k) {
      if (p.density[k] >= 1) continue;
      auto hit = ctx.cache->GetAs<CachedTrim>(
          TrimCacheKey(ctx, opts_, "tensor-trim", experts_[k], t.name,
                       keep_k[k], drop_k[k]));
      if (hit == nullptr) continue;
      p.keep[k] = hit->keep;
      p.drop[k] = hit->drop;
      from_cache[k] = true;
    }
    std::vector<SelectionQuery> remaining;
    std::vector<std::pair<size_t, bool>> remaining_owner;
    for (size_t q = 0; q < queries.size(); ++q) {
      if (from_cache[owner[q].first]) continue;
      remaining.push_back(queries[q]);
      remaining_owner.push_back(owner[q]);
    }
    queries.swap(remaining);
    owner.swap(remaining_owner);
  }
  if (!queries.empty()) {
    MagnitudeSelector selector(plan, *ctx.pool, ctx.chunk_elems, ctx.staging);
    const std::vector<const PlannedTensor*> domain = {&t};
    MS_ASSIGN_OR_RETURN(auto results, selector.Select(domain, queries));
    for (size_t q = 0; q < queries.size(); ++q) {
      const auto [k, is_drop] = owner[q];
      TopSet& set = is_drop ? p.drop[k] : p.keep[k];
      const int64_t want = is_drop ? drop_k[k] : keep_k[k];
      set.value = results[q].value;
      const int64_t need = want - results[q].count_greater;
      const bool exact = opts_.keep == KeepMode::kExact ||
                         opts_.sparsify == Sparsify::kOutliers;
      set.all_ties = !exact || need >= results[q].count_equal || set.value == 0;
      if (!set.all_ties) {
        // The merge passes count each chunk's ties (TieLedger).
        set.ties_in_pass = true;
        set.tensor_ties = need;
      }
    }
  }
  if (ctx.cache != nullptr) {
    // The trimmed task vectors depend on what the trims do, and on the
    // merge pass's chunks; not on weights or λ.
    p.trims_cached = true;
    const bool cacheable = ctx.diagnostics == nullptr && opts_.use_base &&
                           (opts_.sparsify == Sparsify::kMagnitude ||
                            opts_.sparsify == Sparsify::kOutliers);
    p.tv_keys.assign(cacheable ? n : 0, "");
    for (size_t k = 0; k < n; ++k) {
      if (p.density[k] >= 1) continue;  // τ whole: not worth keeping
      p.trims_cached = p.trims_cached && from_cache[k];
      if (cacheable) {
        p.tv_keys[k] =
            absl::StrCat(TrimCacheKey(ctx, opts_, "tensor-tv", experts_[k],
                                      t.name, keep_k[k], drop_k[k]),
                         "|", PassChunk(t, ctx));
      }
    }
    for (size_t k = 0; k < n; ++k) {
      if (p.density[k] >= 1 || from_cache[k]) continue;
      auto entry =
          std::make_shared<CachedTrim>(CachedTrim{p.keep[k], p.drop[k]});
      const int64_t bytes = static_cast<int64_t>(
          sizeof(CachedTrim) +
          8 * (entry->keep.chunk_ties.size() + entry->drop.chunk_ties.size()));
      ctx.cache->Put(TrimCacheKey(ctx, opts_, "tensor-trim", experts_[k],
                                  t.name, keep_k[k], drop_k[k]),
                     entry, bytes);
    }
  }
  return absl::OkStatus();
}

absl::Status TaskVectorMerge::ComputeScale(const MergePlan& plan,
                                           const PlannedTensor& t,
                                           TensorParams& p,
                                           ExecContext& ctx) const {
  const size_t n = experts_.size();
  p.scale.assign(n, 1.f);
  if (opts_.rescale == Rescale::kInverse) {
    // DELLA's 1/p is per element, applied with its marks.
    if (opts_.sparsify == Sparsify::kRankSampling) return absl::OkStatus();
    for (size_t k = 0; k < n; ++k) {
      const double d = p.density[k];
      if (d > 0 && d < 1) p.scale[k] = static_cast<float>(1.0 / d);
    }
  } else if (opts_.rescale == Rescale::kL1) {
    MS_ASSIGN_OR_RETURN(PassResult r,
                        RunPass(plan, t, p, ctx, PassMode::kL1, nullptr));
    for (size_t k = 0; k < n; ++k) {
      // mergekit leaves the tensor unscaled when either norm is ~0.
      if (r.l1_all[k] >= 1e-7 && r.l1_kept[k] >= 1e-7) {
        p.scale[k] = static_cast<float>(r.l1_all[k] / r.l1_kept[k]);
      }
    }
  }
  return absl::OkStatus();
}

int64_t TaskVectorMerge::PassChunk(const PlannedTensor& t,
                                   const ExecContext& ctx) const {
  if (opts_.sparsify != Sparsify::kRankSampling) return ctx.chunk_elems;
  // DELLA ranks within rows: chunks hold whole rows (at least one).
  const int64_t cols = std::max<int64_t>(t.row_length(), 1);
  return cols * std::max<int64_t>(1, ctx.chunk_elems / cols);
}

absl::StatusOr<TaskVectorMerge::PassResult> TaskVectorMerge::RunPass(
    const MergePlan& plan, const PlannedTensor& t, TensorParams& p,
    ExecContext& ctx, PassMode mode, TensorSink* out,
    float* keep_update) const {
  const size_t n = experts_.size();
  const int64_t cols = t.row_length();
  const int64_t chunk = PassChunk(t, ctx);
  const int64_t nchunks = (t.numel + chunk - 1) / chunk;
  // DARE and DELLA with L1 rescaling sample twice (norms, then merge): the
  // first pass keeps its draws as one bit per element and chunk-aligned
  // words, so the merge pass neither draws nor ranks again.
  const int64_t words = (chunk + 63) / 64;
  if (mode == PassMode::kL1 && (opts_.sparsify == Sparsify::kRankSampling ||
                                opts_.sparsify == Sparsify::kRandom)) {
    p.sampled.assign(
        n, std::vector<uint64_t>(static_cast<size_t>(nchunks * words), 0));
  }
  std::vector<Buffers> buffers(static_cast<size_t>(ctx.pool->num_threads()));
  std::vector<double> l1(mode == PassMode::kL1 ? 2 * n * nchunks : 0, 0.0);
  std::vector<int64_t> balance(mode == PassMode::kCensus ? nchunks : 0, 0);
  FirstError error;
  // Exact keeps whose ties this pass counts: a ledger each.
  std::vector<std::unique_ptr<TieLedger>> keep_ties(n), drop_ties(n);
  auto ledger = [&](const TopSet& set) {
    return set.kind == TopSet::kThreshold && !set.all_ties && set.ties_in_pass
               ? std::make_unique<TieLedger>(nchunks, set.tensor_ties)
               : nullptr;
  };
  for (size_t k = 0; k < p.keep.size(); ++k) keep_ties[k] = ledger(p.keep[k]);
  for (size_t k = 0; k < p.drop.size(); ++k) drop_ties[k] = ledger(p.drop[k]);
  const std::function<bool()> abandon = [&] {
    return error.failed() || ctx.is_cancelled();
  };
  const bool use_base = opts_.use_base;
  const bool elect = opts_.consensus != Consensus::kNone;
  const bool diagnose = ctx.diagnostics != nullptr && mode == PassMode::kMerge;
  // Sign that wins a tied election.
  float tie_sign = 1.f;
  if (opts_.zero_sign == ZeroSign::kMajority)
    tie_sign = p.majority > 0 ? 1.f : -1.f;

  // Experts whose trimmed τ is cached are not read.
  const bool rebuild = mode != PassMode::kL1 && !p.tv_cached.empty();
  const bool capture = mode == PassMode::kMerge && !p.tv_capture.empty();
  std::vector<int> read = experts_;
  if (rebuild) {
    read.clear();
    for (size_t k = 0; k < n; ++k) {
      if (p.tv_cached[k] == nullptr) read.push_back(experts_[k]);
    }
  }
  const absl::Status staged = ForEachStagedChunk(
      *ctx.pool, ctx.staging, t, use_base, read, chunk,
      [&](int64_t ci, int w, const PlannedTensor& in) {
        if (error.failed() || ctx.is_cancelled()) return;
        Buffers& b = buffers[static_cast<size_t>(w)];
        b.Reserve(n, static_cast<size_t>(chunk));
        const int64_t begin = ci * chunk;
        const int64_t cnt = std::min(chunk, t.numel - begin);
        float* base = b.base;
        if (use_base) {
          if (!LoadDelta(in.base, begin, cnt, nullptr, base)) {
            error.Set(NonFiniteError(t.name, *plan.config().base_model));
            return;
          }
        } else {
          std::fill(base, base + cnt, 0.f);
        }
        // Task vectors, sparsified and rescaled.
        for (size_t k = 0; k < n; ++k) {
          const int m = experts_[k];
          float* tv = b.Tv(k);
          if (rebuild && p.tv_cached[k] != nullptr) {
            p.tv_cached[k]->Unpack(ci, cnt, tv);
            const float s = p.scale[k];
            if (s != 1.f) {
              for (int64_t j = 0; j < cnt; ++j) tv[j] *= s;
            }
            continue;
          }
          if (!LoadDelta(in.models[static_cast<size_t>(m)], begin, cnt,
                         use_base ? base : nullptr, tv)) {
            error.Set(NonFiniteError(
                t.name, plan.models()[static_cast<size_t>(m)].ref));
            return;
          }
          if (diagnose) {
            if (b.raw.size() < n * static_cast<size_t>(chunk)) {
              b.raw.resize(n * static_cast<size_t>(chunk));
            }
            std::copy(tv, tv + cnt,
                      b.raw.data() + k * static_cast<size_t>(chunk));
          }
          // L1 norms before and after the trim, each summed in index order.
          // A threshold trim works in place, so its `all` is summed first;
          // a mask's sums share one loop with it (MaskAndNorms).
          const bool in_place = opts_.sparsify == Sparsify::kMagnitude &&
                                p.keep[k].kind == TopSet::kThreshold &&
                                p.keep[k].all_ties;
          double all = 0, kept = 0;
          if (mode == PassMode::kL1 && in_place)
            all = IndexOrderAbsSum(tv, cnt);
          float* mark = b.mask;
          bool masked = true;
          switch (opts_.sparsify) {
            case Sparsify::kNone:
              masked = false;
              break;
            case Sparsify::kRandom:
            case Sparsify::kRankSampling: {
              if (p.density[k] >= 1) {
                masked = false;
                break;
              }
              uint64_t* bits =
                  p.sampled.empty()
                      ? nullptr
                      : p.sampled[k].data() + static_cast<size_t>(ci) * words;
              if (bits != nullptr && mode != PassMode::kL1) {
                // The L1 pass drew (and ranked) this chunk already.
                MaskByBits(tv, bits, cnt);
                masked = false;
                break;
              }
              ElementRandom rng(opts_.seed, t.name, m);
              rng.Fill(begin, cnt, b.rnd);
              const float* u = b.rnd;
              if (opts_.sparsify == Sparsify::kRankSampling) {
                MarkRankSampled(tv, u, cnt, cols, p.density[k], p.epsilon[k],
                                opts_.rescale == Rescale::kInverse, b.ranking,
                                mark);
              } else {
                const float d = static_cast<float>(p.density[k]);
                for (int64_t j = 0; j < cnt; ++j)
                  mark[j] = u[j] < d ? 1.f : 0.f;
              }
              if (bits != nullptr) BitsFromMark(mark, cnt, bits);
              break;
            }
            case Sparsify::kMagnitude:
              if (in_place) {
                // The common case, fused: keep |τ| >= threshold.
                TrimBelow(tv, p.keep[k].value, cnt);
                masked = false;
              } else {
                MarkTopSet(p.keep[k], ci, tv, cnt, mark, keep_ties[k].get(),
                           abandon);
              }
              break;
            case Sparsify::kOutliers: {
              MarkTopSet(p.keep[k], ci, tv, cnt, mark, keep_ties[k].get(),
                         abandon);
              float* drop = b.rnd;
              MarkTopSet(p.drop[k], ci, tv, cnt, drop, drop_ties[k].get(),
                         abandon);
              for (int64_t j = 0; j < cnt; ++j) mark[j] *= 1.f - drop[j];
              break;
            }
          }
          if (mode == PassMode::kL1 && masked) {
            MaskAndNorms(tv, mark, cnt, &all, &kept);
          } else if (mode == PassMode::kL1) {
            kept = IndexOrderAbsSum(tv, cnt);
            if (!in_place) all = kept;  // tv unchanged
          } else if (masked) {
            for (int64_t j = 0; j < cnt; ++j) tv[j] *= mark[j];
          }
          if (capture && p.tv_capture[k] != nullptr) {
            p.tv_capture[k]->Pack(ci, tv, cnt);
          }
          if (mode == PassMode::kL1) {
            l1[(static_cast<size_t>(ci) * n + k) * 2] = all;
            l1[(static_cast<size_t>(ci) * n + k) * 2 + 1] = kept;
            continue;
          }
          const float s = p.scale[k];
          if (s != 1.f) {
            for (int64_t j = 0; j < cnt; ++j) tv[j] *= s;
          }
        }
        if (mode == PassMode::kL1) return;

        float* acc = b.acc;
        float* den = b.den;
        float* o = b.out;
        float* q = b.rnd;  // the draws are used up by now
        // merge_update's work on elements [t0, t0 + m) of the chunk.
        auto merge_tile = [&](const std::vector<double>& weight, int64_t t0,
                              int64_t m) {
          float* acc_t = acc + t0;
          float* den_t = den + t0;
          float* q_t = q + t0;
          auto tv_of = [&](size_t k) { return b.Tv(k) + t0; };
          std::fill(acc_t, acc_t + m, 0.f);
          if (!elect) {
            float wsum = 0;
            for (size_t k = 0; k < n; ++k) {
              const float wk = static_cast<float>(weight[k]);
              AddScaled(acc_t, tv_of(k), wk, m);
              wsum += wk;
            }
            switch (opts_.divisor) {
              case Divisor::kNone:
                Quotient(q_t, acc_t, 1.f, m);
                break;
              case Divisor::kWeight:
                // Divide (not multiply by 1/x) to match the references
                // bitwise.
                QuotientDivided(q_t, acc_t,
                                std::fabs(wsum) < 1e-8f ? 1.f : wsum, m);
                break;
              case Divisor::kCount:
                Quotient(q_t, acc_t, 1.f / static_cast<float>(n), m);
                break;
            }
            return true;
          }
          // Election over e_k = (w_k) * u_k; `sum` becomes the elected sign.
          float* sum = b.sum + t0;
          std::fill(sum, sum + m, 0.f);
          std::fill(den_t, den_t + m, 0.f);
          for (size_t k = 0; k < n; ++k) {
            const float ew =
                opts_.sign_weighted ? static_cast<float>(weight[k]) : 1.f;
            if (opts_.consensus == Consensus::kSum) {
              AddScaled(sum, tv_of(k), ew, m);
            } else {
              AddSigns(sum, tv_of(k), ew, m);
            }
          }
          if (mode == PassMode::kCensus) {
            balance[static_cast<size_t>(ci)] += SignBalance(sum, m);
            return false;
          }
          ElectSign(sum, tie_sign, m);
          for (size_t k = 0; k < n; ++k) {
            const float wk = static_cast<float>(weight[k]);
            AddAgreeing(acc_t, den_t, tv_of(k), sum,
                        opts_.sign_weighted ? wk : 1.f, wk,
                        opts_.divisor == Divisor::kCount ? 1.f : wk, m);
          }
          switch (opts_.divisor) {
            case Divisor::kNone:
              Quotient(q_t, acc_t, 1.f, m);
              break;
            case Divisor::kWeight:
              QuotientByWeight(q_t, acc_t, den_t, m);
              break;
            case Divisor::kCount:
              QuotientByCount(q_t, acc_t, den_t, m);
              break;
          }
          return true;
        };
        // q from the trimmed task vectors under `weight`; false after a
        // census (its pass wants the election's balance only). Tile by
        // tile: a chunk's arrays (the experts' τ, the votes, sums and
        // weights) fill the L2 cache, so running each kernel over the whole
        // chunk made every kernel stream them from L2 again; a tile's stay
        // in L1 from one kernel to the next (a weight sweep's variants
        // spent 40% of their time in these loops). Each element sees the
        // same operations in the same order either way.
        auto merge_update = [&](const std::vector<double>& weight) {
          if (elect && mode != PassMode::kCensus) {
            // The whole chunk in one pass, the same bits as the kernels
            // merge_tile runs.
            b.tvs.resize(n);
            b.ew.resize(n);
            b.w.resize(n);
            b.d.resize(n);
            for (size_t k = 0; k < n; ++k) {
              const float wk = static_cast<float>(weight[k]);
              b.tvs[k] = b.Tv(k);
              b.ew[k] = opts_.sign_weighted ? wk : 1.f;
              b.w[k] = wk;
              b.d[k] = opts_.divisor == Divisor::kCount ? 1.f : wk;
            }
            const QuotientKind kind =
                opts_.divisor == Divisor::kNone     ? QuotientKind::kNone
                : opts_.divisor == Divisor::kWeight ? QuotientKind::kByWeight
                                                    : QuotientKind::kByCount;
            ElectAndMerge(b.tvs.data(), static_cast<int>(n), b.ew.data(),
                          b.w.data(), b.d.data(),
                          opts_.consensus != Consensus::kSum, tie_sign, kind, q,
                          cnt);
            return true;
          }
          bool made = true;
          for (int64_t t0 = 0; t0 < cnt; t0 += kMergeTile) {
            made = merge_tile(weight, t0, std::min(kMergeTile, cnt - t0));
          }
          return made;
        };
        if (!merge_update(p.weight)) return;
        if (keep_update != nullptr) std::copy(q, q + cnt, keep_update + begin);
        ApplyLambda(o, base, q, use_base ? p.lambda : 1.f, cnt);
        if (diagnose) {
          ctx.diagnostics->Add(
              t.name, ci,
              ChunkDiagnostics(b, n, chunk, cnt, base, o, use_base));
        }
        if (out == nullptr) return;
        absl::Status st = out->WriteF32(begin, o, cnt);
        // A sweep's other points of this row: the same trimmed τ, q merged
        // again where the weights differ, one output each (o is free again
        // once written).
        const std::vector<double>* merged_with = &p.weight;
        for (size_t v = 0; v < ctx.variant_outputs.size() && st.ok(); ++v) {
          const ExecContext::VariantOutput& vo = ctx.variant_outputs[v];
          const std::vector<double>& w = p.variant_weight[v];
          if (w != *merged_with) {
            merge_update(w);
            merged_with = &w;
          }
          ApplyLambda(o, base, q,
                      vo.lambda ? static_cast<float>(*vo.lambda) : p.lambda,
                      cnt);
          st = vo.sink->WriteF32(begin, o, cnt);
        }
        if (!st.ok()) error.Set(std::move(st));
      });
  MS_RETURN_IF_ERROR(staged);
  MS_RETURN_IF_ERROR(error.status());
  if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
  PassResult r;
  if (mode == PassMode::kL1) {
    r.l1_all.assign(n, 0);
    r.l1_kept.assign(n, 0);
    for (int64_t ci = 0; ci < nchunks; ++ci) {  // chunk order: deterministic
      for (size_t k = 0; k < n; ++k) {
        r.l1_all[k] += l1[(static_cast<size_t>(ci) * n + k) * 2];
        r.l1_kept[k] += l1[(static_cast<size_t>(ci) * n + k) * 2 + 1];
      }
    }
  }
  for (int64_t b : balance) r.balance += b;
  return r;
}

bool TaskVectorMerge::WritesVariants(const MergePlan& plan, Backend backend,
                                     bool weights) const {
  if (!kind_.use_base || backend != Backend::kFused) return false;
  if (!weights) return true;
  // A tied election's majority sign comes from a census under the merge's
  // own weights.
  auto o = ResolveTaskVectorOptions(plan, kind_);
  return o.ok() && o->zero_sign != ZeroSign::kMajority;
}

absl::Status TaskVectorMerge::MergeTensor(const MergePlan& plan,
                                          const PlannedTensor& t,
                                          ExecContext& ctx, TensorSink& out) {
  return Merge(plan, t, ctx, &out, nullptr);
}

absl::Status TaskVectorMerge::MergedUpdate(const MergePlan& plan,
                                           const PlannedTensor& t,
                                           ExecContext& ctx, float* update) {
  return Merge(plan, t, ctx, nullptr, update);
}

absl::Status TaskVectorMerge::Merge(const MergePlan& plan,
                                    const PlannedTensor& t, ExecContext& ctx,
                                    TensorSink* out, float* wanted_update) {
  MS_ASSIGN_OR_RETURN(TensorParams p, Resolve(plan, t, ctx));
  // Each variant's weights: the merge's, with its changes.
  bool other_weights = false;
  for (const ExecContext::VariantOutput& v : ctx.variant_outputs) {
    std::vector<double> w = p.weight;
    for (const auto& [model, weight] : v.weights) {
      for (size_t k = 0; k < experts_.size(); ++k) {
        if (experts_[k] == model) w[k] = weight;
      }
    }
    other_weights = other_weights || w != p.weight;
    p.variant_weight.push_back(std::move(w));
  }
  const bool selects = opts_.sparsify == Sparsify::kMagnitude ||
                       opts_.sparsify == Sparsify::kOutliers;
  if (ctx.backend == Backend::kAten) {
    // The ATen path selects per tensor itself (kthvalue); model-scope sets
    // come from Prepare.
    MS_ASSIGN_OR_RETURN(const EngineAtenTable* aten,
                        EngineAten("backend: aten"));
    return aten->merge_task_vectors(*this, plan, t, p, ctx, out, wanted_update);
  }
  // In the server, a merge that differs from an earlier one only in λ reads
  // the base and the earlier merged update. An update over a quarter of the
  // cache is not kept (it would evict everything else), nor one the caller
  // knows no later merge reads.
  std::string update_key;
  bool keep_update = false;
  const size_t update_bytes = static_cast<size_t>(t.numel) * sizeof(float);
  // A cached q serves λ variants, not other weights.
  if (ctx.cache != nullptr && ctx.diagnostics == nullptr && opts_.use_base &&
      !other_weights) {
    update_key = UpdateKey(ctx, t, p);
    if (!update_key.empty()) {
      auto hit = ctx.cache->GetAs<HugeBuffer>(update_key);
      if (hit != nullptr) {
        if (out == nullptr) {
          std::copy_n(hit->as<float>(), t.numel, wanted_update);
          return absl::OkStatus();
        }
        return ApplyCachedUpdate(plan, t, p, hit->as<float>(), ctx, *out);
      }
      keep_update =
          (ctx.cache_hint == CacheHint::kGuess ||
           ctx.cache_hint == CacheHint::kUpdate) &&
          static_cast<int64_t>(update_bytes) <= ctx.cache->capacity_bytes() / 4;
    }
  }
  if (selects && opts_.scope == TrimScope::kTensor) {
    MS_RETURN_IF_ERROR(SelectForTensor(plan, t, ctx, p));
  }
  MS_RETURN_IF_ERROR(ComputeScale(plan, t, p, ctx));
  if (opts_.consensus != Consensus::kNone &&
      opts_.zero_sign == ZeroSign::kMajority &&
      opts_.scope == TrimScope::kTensor) {
    MS_ASSIGN_OR_RETURN(PassResult r,
                        RunPass(plan, t, p, ctx, PassMode::kCensus, nullptr));
    p.majority = r.balance > 0 ? 1 : -1;
  }
  // A merge whose trims all came from the cache but whose q did not (a
  // sweep over weights) keeps each expert's trimmed τ, and later ones
  // rebuild it instead of reading the expert. q is then not kept: such a
  // sweep does not reuse it, and both would not fit the cache's budget.
  // A trimmed τ is in the cache only if such a merge, or a sweep's merge
  // told that weights will change (whose first point keeps τ already), put
  // it there; only those look, and count a miss.
  const bool keep_tv = ctx.cache_hint == CacheHint::kTrimmed ||
                       (ctx.cache_hint == CacheHint::kGuess && p.trims_cached);
  if (!p.tv_keys.empty() && keep_tv && opts_.scope == TrimScope::kTensor) {
    const size_t n = experts_.size();
    p.tv_cached.assign(n, nullptr);
    p.tv_capture.assign(n, nullptr);
    int64_t room = 0;  // for the τ this merge keeps
    for (size_t k = 0; k < n; ++k) {
      if (p.tv_keys[k].empty()) continue;
      p.tv_cached[k] = ctx.cache->GetAs<SparseTaskVector>(p.tv_keys[k]);
      if (p.tv_cached[k] != nullptr) {
        tv_bytes_ += p.tv_cached[k]->bytes();
      } else {
        // What it will take: the kept values and a bit per element.
        const int64_t need = static_cast<int64_t>(static_cast<double>(t.numel) *
                                                  (p.density[k] * 4 + 0.125));
        if ((tv_bytes_ += need) <= ctx.cache->capacity_bytes() / 4 * 3) {
          room += need;
          p.tv_capture[k] =
              std::make_shared<SparseTaskVector>(t.numel, PassChunk(t, ctx));
        }
      }
    }
    // SparseTaskVector allocates as chunks are packed: room is made first.
    if (room > 0) ctx.cache->MakeRoom(room);
    // Not even where τ would pass the budget: a new q per point would evict
    // the τ and trims the next point reads.
    keep_update = false;
  }
  std::shared_ptr<HugeBuffer> update;
  if (keep_update) {
    ctx.cache->MakeRoom(static_cast<int64_t>(update_bytes));
    // The merge pass writes every element of q (keep_update).
    update =
        std::make_shared<HugeBuffer>(HugeBuffer::Uninitialized(update_bytes));
  }
  float* keep = update != nullptr ? update->as<float>() : wanted_update;
  MS_ASSIGN_OR_RETURN(PassResult r,
                      RunPass(plan, t, p, ctx, PassMode::kMerge, out, keep));
  (void)r;
  for (size_t k = 0; k < p.tv_capture.size(); ++k) {
    if (p.tv_capture[k] == nullptr) continue;
    ctx.cache->Put(
        p.tv_keys[k], p.tv_capture[k],
        p.tv_capture[k]->bytes() + static_cast<int64_t>(p.tv_keys[k].size()));
  }
  if (update != nullptr) {
    if (wanted_update != nullptr) {
      std::copy_n(update->as<float>(), t.numel, wanted_update);
    }
    ctx.cache->Put(update_key, update,
                   static_cast<int64_t>(update->mapped() + update_key.size()));
  }
  return absl::OkStatus();
}

std::string TaskVectorMerge::UpdateKey(const ExecContext& ctx,
                                       const PlannedTensor& t,
                                       const TensorParams& p) const {
  // Everything q depends on but λ: the inputs' content, the tensor, every
  // option and per-model number, the chunking (tie lists), and for a
  // whole-model trim the sets Prepare chose (they depend on the domain).
  if (ctx.base_digest.empty()) return "";
  std::string key = absl::StrCat(
      "update|", ctx.base_digest, "|", t.name, "|", ctx.chunk_elems, "|",
      static_cast<int>(opts_.sparsify), static_cast<int>(opts_.scope),
      static_cast<int>(opts_.keep), static_cast<int>(opts_.consensus),
      opts_.sign_weighted, static_cast<int>(opts_.zero_sign),
      static_cast<int>(opts_.divisor), static_cast<int>(opts_.rescale),
      opts_.use_base, "|", opts_.seed, "|", p.majority);
  for (size_t k = 0; k < experts_.size(); ++k) {
    const std::string& digest =
        ctx.model_digests[static_cast<size_t>(experts_[k])];
    if (digest.empty()) return "";
    absl::StrAppend(&key, "|", digest,
                    absl::StrFormat(":%a,%a,%a,%a", p.weight[k], p.density[k],
                                    p.gamma[k], p.epsilon[k]));
  }
  if (opts_.scope == TrimScope::kModel) {
    for (const TopSet& set : p.keep) {
      absl::StrAppend(&key, "|", static_cast<int>(set.kind),
                      absl::StrFormat(":%a:", set.value), set.all_ties, ":",
                      set.ties_in_pass, ":", set.tensor_ties, ":",
                      absl::StrJoin(set.chunk_ties, ","));
    }
  }
  return key;
}

absl::Status TaskVectorMerge::ApplyCachedUpdate(
    const MergePlan& plan, const PlannedTensor& t, const TensorParams& p,
    const float* update, ExecContext& ctx, TensorSink& out) const {
  const int64_t chunk = ctx.chunk_elems;
  struct Scratch {
    std::vector<float> base, out;
  };
  std::vector<Scratch> scratch(static_cast<size_t>(ctx.pool->num_threads()));
  FirstError error;
  const absl::Status staged = ForEachStagedChunk(
      *ctx.pool, ctx.staging, t, /*base=*/true, {}, chunk,
      [&](int64_t ci, int w, const PlannedTensor& in) {
        if (error.failed() || ctx.is_cancelled()) return;
        Scratch& s = scratch[static_cast<size_t>(w)];
        s.base.resize(static_cast<size_t>(chunk));
        s.out.resize(static_cast<size_t>(chunk));
        const int64_t begin = ci * chunk;
        const int64_t cnt = std::min(chunk, t.numel - begin);
        if (!LoadDelta(in.base, begin, cnt, nullptr, s.base.data())) {
          error.Set(NonFiniteError(t.name, *plan.config().base_model));
          return;
        }
        ApplyLambda(s.out.data(), s.base.data(), update + begin, p.lambda, cnt);
        absl::Status st = out.WriteF32(begin, s.out.data(), cnt);
        // Other λ values (Merge reads no cached q for other weights).
        for (const ExecContext::VariantOutput& v : ctx.variant_outputs) {
          if (!st.ok()) break;
          ApplyLambda(s.out.data(), s.base.data(), update + begin,
                      v.lambda ? static_cast<float>(*v.lambda) : p.lambda, cnt);
          st = v.sink->WriteF32(begin, s.out.data(), cnt);
        }
        if (!st.ok()) error.Set(std::move(st));
      });
  MS_RETURN_IF_ERROR(staged);
  MS_RETURN_IF_ERROR(error.status());
  if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
  return absl::OkStatus();
}

}  // namespace mergeserve
