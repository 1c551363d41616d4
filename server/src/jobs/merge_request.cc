#include "mergeserve/jobs/merge_request.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/jobs/data_aware_merge.h"

namespace mergeserve {
namespace {

// Slack for LibTorch's own allocations (kernels, caching allocator).
constexpr int64_t kTorchSlack = int64_t{256} << 20;

// Checkpoints a config refers to (base, models or slices' sources, both
// parts of MODEL+LORA, fisher/gram, a tokenizer's source model).
std::set<std::string> ReferencedCheckpoints(const MergeConfig& c) {
  std::set<std::string> refs;
  auto add = [&](const std::string& ref) {
    const size_t plus = ref.find('+');
    refs.insert(ref.substr(0, plus));
    if (plus != std::string::npos) refs.insert(ref.substr(plus + 1));
  };
  if (c.base_model) add(*c.base_model);
  for (const SliceSpec& s : c.slices) {
    for (const SliceSource& src : s.sources) add(src.model);
  }
  for (const ModelEntry& m : c.models) {
    add(m.model);
    for (const auto& [key, value] : m.parameters) {
      if (IsPerModelOnlyParameter(key) && value.is_string()) {
        refs.insert(*value.AsString(key));
      }
    }
  }
  if (c.tokenizer && c.tokenizer->source != "base" &&
      c.tokenizer->source != "union") {
    add(c.tokenizer->source);
  }
  return refs;
}

}  // namespace

absl::StatusOr<PlannedMerge> PlanMerge(MergeRequest request,
                                       const CheckpointRegistry& registry,
                                       int threads) {
  const MergeConfig& config = request.config;
  const std::string& tenant = request.tenant;
  if (config.merge_method != "ri" &&
      FindMethod(config.merge_method) == nullptr) {
    return CreateMethod(config.merge_method).status();
  }
  PlannedMerge p;
  p.canonical_yaml = config.ToYaml();
  p.data_aware = IsDataAware(config);
  // Opening the plan checks names, tensors, shapes, parameter ranges and
  // every input file's location now, before the job waits in the queue;
  // data-aware requests are planned with stand-ins for the statistics they
  // will compute.
  // The client's text (comments and all) is not kept.
  request.config.source_text.clear();
  MS_ASSIGN_OR_RETURN(MergeConfig planning,
                      DataAwarePlanningConfig(config, registry, tenant));
  MS_ASSIGN_OR_RETURN(p.plan,
                      MergePlan::Create(planning, registry.Resolver(tenant)));
  p.runnable = !p.data_aware;
  p.memory = EstimateMergeMemory(*p.plan, Backend::kFused, threads);
  MS_ASSIGN_OR_RETURN(int64_t data_memory,
                      EstimateDataAwareMemory(config, registry, tenant));
  // The statistics are computed before the merge and released after.
  p.memory = std::max(p.memory, data_memory);
  for (const PlannedTensor& t : p.plan->tensors()) {
    p.output_bytes += static_cast<int64_t>(t.out_bytes());
  }
  p.tensors_total = static_cast<int64_t>(p.plan->tensors().size());

  // Content address: the canonical request, the content of everything it
  // reads, and the tenant (results are never shared across tenants).
  std::string lines =
      absl::StrCat("tenant ", tenant, "\n", p.canonical_yaml, "\n--\n");
  for (const std::string& ref : ReferencedCheckpoints(config)) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, registry.Get(tenant, ref, false));
    absl::StrAppend(&lines, ref, " ", c.content_digest, "\n");
  }
  MS_ASSIGN_OR_RETURN(std::string data_lines,
                      DataAwareDigestLines(config, registry, tenant));
  p.digest = Sha256Hex(lines + data_lines);
  p.request = std::move(request);
  return p;
}

absl::StatusOr<int64_t> EstimateDataAwareMemory(
    const MergeConfig& config, const CheckpointRegistry& registry,
    const std::string& tenant) {
  if (!IsDataAware(config)) return 0;
  int64_t largest = 0, all = 0, grams = 0;
  for (const std::string& e : ExpertsOf(config)) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, registry.Get(tenant, e, true));
    largest = std::max(largest, c.parameter_count * 4);
    all += c.parameter_count * 4;
    int64_t g = 0;
    for (const TensorMeta& t : c.tensors) {
      if (t.shape.size() == 2) g += t.shape[1] * t.shape[1] * 4;
    }
    grams = std::max(grams, g);
  }
  if (config.merge_method == "ri") {
    // Every program is loaded at once (each expert's heads are read), and
    // the expert being adapted carries gradients and two AdamW moments.
    int64_t base = 0;
    if (config.base_model) {
      MS_ASSIGN_OR_RETURN(CheckpointRecord b,
                          registry.Get(tenant, *config.base_model, false));
      base = b.parameter_count * 4;
    }
    return all + base + 4 * largest + kTorchSlack;
  }
  if (config.merge_method == "regmean")
    return 2 * largest + grams + kTorchSlack;
  // Fisher: parameters, one example's gradients, the running sum.
  return 4 * largest + kTorchSlack;
}

absl::StatusOr<int64_t> EstimateEvaluationMemory(
    const CheckpointRegistry& registry, const std::string& tenant,
    const std::vector<std::string>& checkpoints) {
  int64_t largest = 0;
  for (const std::string& name : checkpoints) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, registry.Get(tenant, name, false));
    largest = std::max(largest, c.parameter_count * 4);
  }
  // The program's parameters, the weights loaded into it, activations.
  return 3 * largest + kTorchSlack;
}

}  // namespace mergeserve
