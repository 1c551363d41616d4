#include "methods/model_trim.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/magnitude_selector.h"
#include "mergeserve/engine/task_vector_cache.h"

namespace mergeserve {
namespace {
// One expert's sets, as the cache keeps them.
using PerTensorSets = std::map<std::string, TopSet>;
}  // namespace

absl::StatusOr<ModelTrimSets> SelectModelTrim(const MergePlan& plan,
                                              ExecContext& ctx,
                                              const TaskVectorOptions& opts,
                                              double default_density,
                                              const std::vector<int>& experts) {
  ModelTrimSets sets_by_tensor;
  std::vector<const PlannedTensor*> domain;
  for (const PlannedTensor& t : plan.tensors()) {
    if (t.merge) domain.push_back(&t);
  }
  int64_t total = 0;
  for (const PlannedTensor* t : domain) total += t->numel;
  // The sets depend on which tensors the trim covers (a filter list or a
  // different checkpoint layout changes the domain), not only on k.
  std::string names;
  for (const PlannedTensor* t : domain) absl::StrAppend(&names, t->name, ",");
  const std::string domain_key = absl::StrCat(domain.size(), ":", total, ":",
                                              std::hash<std::string>()(names));
  MagnitudeSelector selector(plan, *ctx.pool, ctx.chunk_elems, ctx.staging);
  std::vector<SelectionQuery> queries;
  std::vector<TopSet> sets(experts.size());
  std::vector<int64_t> wanted(experts.size(), 0);
  std::vector<std::string> keys(experts.size());
  std::vector<std::shared_ptr<const PerTensorSets>> cached(experts.size());
  for (size_t k = 0; k < experts.size(); ++k) {
    const int m = experts[k];
    double density = 1;
    for (size_t i = 0; i < domain.size(); ++i) {
      MS_ASSIGN_OR_RETURN(
          double d, plan.Number("density", m, *domain[i], default_density));
      if (i > 0 && d != density) {
        return absl::InvalidArgumentError(absl::StrCat(
            "trim_scope: model needs one density per model; model '",
            plan.models()[static_cast<size_t>(m)].ref,
            "' has a gradient or filter list"));
      }
      density = d;
    }
    int64_t keep = FloorCount(density, total);
    if (opts.keep == KeepMode::kPaper && density > 0 && density < 1) ++keep;
    wanted[k] = keep;
    if (density <= 0 || keep == 0) {
      sets[k].kind = TopSet::kNone;
    } else if (density >= 1 || keep >= total) {
      sets[k].kind = TopSet::kAll;
    } else {
      sets[k].kind = TopSet::kThreshold;
      if (ctx.cache != nullptr) {
        keys[k] = TrimCacheKey(ctx, opts, "model-trim", m, domain_key, keep, 0);
        cached[k] = ctx.cache->GetAs<PerTensorSets>(keys[k]);
        // Every tensor's set, or none (a hash collision): select again.
        for (const PlannedTensor* t : domain) {
          if (cached[k] != nullptr && cached[k]->count(t->name) == 0) {
            cached[k] = nullptr;
          }
        }
      }
      // Exact keep breaks ties by index: the selector records them per
      // chunk, but for the tensor where the kept ties run out, whose ties
      // the merge pass counts (a TieLedger, as per tensor).
      if (cached[k] == nullptr) {
        const bool exact = opts.keep == KeepMode::kExact;
        queries.push_back({m, keep, exact, exact});
      }
    }
  }
  MS_ASSIGN_OR_RETURN(auto results, selector.Select(domain, queries));
  size_t q = 0;
  std::vector<std::vector<int64_t>> chunk_ties(experts.size());
  std::vector<int64_t> tensor_keep(experts.size(), 0);
  for (size_t k = 0; k < experts.size(); ++k) {
    if (sets[k].kind != TopSet::kThreshold || cached[k] != nullptr) continue;
    const SelectionResult& r = results[q++];
    sets[k].value = r.value;
    const int64_t need = wanted[k] - r.count_greater;
    sets[k].all_ties =
        opts.keep != KeepMode::kExact || need >= r.count_equal || r.value == 0;
    if (!sets[k].all_ties) {
      chunk_ties[k] = r.chunk_keep;
      tensor_keep[k] = r.tensor_keep;
    }
  }
  // Split into per-tensor sets (chunk order matches ChunkDomain), from the
  // cache where it had them.
  std::vector<std::shared_ptr<PerTensorSets>> fresh(experts.size());
  for (size_t k = 0; k < experts.size(); ++k) {
    if (sets[k].kind == TopSet::kThreshold && cached[k] == nullptr) {
      fresh[k] = std::make_shared<PerTensorSets>();
    }
  }
  size_t chunk_base = 0;
  for (const PlannedTensor* t : domain) {
    const size_t nchunks =
        static_cast<size_t>((t->numel + ctx.chunk_elems - 1) / ctx.chunk_elems);
    std::vector<TopSet> per(experts.size());
    for (size_t k = 0; k < experts.size(); ++k) {
      if (cached[k] != nullptr) {
        per[k] = cached[k]->at(t->name);
        continue;
      }
      per[k] = sets[k];
      if (!sets[k].all_ties && sets[k].kind == TopSet::kThreshold) {
        const auto first =
            chunk_ties[k].begin() + static_cast<long>(chunk_base);
        const auto last = first + static_cast<long>(nchunks);
        if (nchunks > 0 &&
            std::all_of(first, last, [](int64_t c) { return c == kAllTies; })) {
          per[k].all_ties = true;  // the kept ties run out after this tensor
        } else if (nchunks > 0 && *first == kCountInPass) {
          // They run out in this tensor: the merge pass counts them.
          per[k].ties_in_pass = true;
          per[k].tensor_ties = tensor_keep[k];
        } else {
          per[k].chunk_ties.assign(first, last);
          per[k].tensor_ties = 0;
          for (int64_t c : per[k].chunk_ties) per[k].tensor_ties += c;
        }
      }
      if (fresh[k] != nullptr) (*fresh[k])[t->name] = per[k];
    }
    sets_by_tensor[t->name] = std::move(per);
    chunk_base += nchunks;
  }
  if (ctx.cache != nullptr) {
    for (size_t k = 0; k < experts.size(); ++k) {
      if (fresh[k] == nullptr) continue;
      int64_t bytes = 0;
      for (const auto& [name, set] : *fresh[k]) {
        bytes += static_cast<int64_t>(name.size() + sizeof(TopSet) +
                                      8 * set.chunk_ties.size());
      }
      ctx.cache->Put(keys[k], fresh[k], bytes);
    }
  }
  return sets_by_tensor;
}

}  // namespace mergeserve
