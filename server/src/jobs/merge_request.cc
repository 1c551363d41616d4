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

// The content address's lines for every checkpoint the merges read (a
// stage's output is not a checkpoint: it is addressed by its merge, which
// the canonical request holds).
absl::StatusOr<std::string> InputLines(const StagedMerge& merge,
                                       const CheckpointRegistry& registry,
                                       const std::string& tenant) {
  std::set<std::string> refs;
  for (const MergeConfig& c : merge.stages) {
    for (const std::string& r : c.References()) refs.insert(r);
  }
  for (const std::string& r : merge.final.References()) {
    refs.insert(r);
  }
  std::string lines;
  for (const std::string& ref : refs) {
    if (merge.IsStage(ref)) continue;
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, registry.Get(tenant, ref, false));
    absl::StrAppend(&lines, ref, " ", c.content_digest, "\n");
  }
  return lines;
}

absl::StatusOr<PlannedMerge> PlanStagedMerge(MergeRequest request,
                                             const CheckpointRegistry& registry,
                                             int threads,
                                             const std::string& scratch_dir) {
  if (scratch_dir.empty()) {
    return absl::InternalError("a request of several merges needs scratch");
  }
  StagedMerge merge = request.Staged();
  std::vector<const MergeConfig*> all;
  for (const MergeConfig& s : merge.stages) all.push_back(&s);
  all.push_back(&merge.final);
  for (const MergeConfig* c : all) {
    if (c->merge_method == "ri" || IsDataAware(*c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          c->name ? absl::StrCat("merge '", *c->name, "': ") : "",
          c->merge_method,
          " computes statistics from data and runs as a request of its own, "
          "not in a file of several merges"));
    }
  }
  StageSetup setup;
  setup.resolver = registry.Resolver(request.tenant);
  setup.scratch_dir = scratch_dir;
  MS_ASSIGN_OR_RETURN(StagesCheck check,
                      CheckStages(merge, setup, Backend::kFused, threads));
  PlannedMerge p;
  p.canonical_yaml = merge.ToYaml();
  p.memory = check.memory;
  p.output_bytes = check.output_bytes;
  p.scratch_bytes = check.scratch_bytes;
  p.tensors_total = check.tensors_total;
  MS_ASSIGN_OR_RETURN(std::string lines,
                      InputLines(merge, registry, request.tenant));
  p.digest = Sha256Hex(absl::StrCat("tenant ", request.tenant, "\n",
                                    p.canonical_yaml, "\n--\n", lines));
  for (MergeConfig& c : request.stages) c.source_text.clear();
  request.config.source_text.clear();
  p.request = std::move(request);
  return p;
}

}  // namespace

absl::StatusOr<MergeRequest> MergeRequestFromYaml(std::string tenant,
                                                  const std::string& text,
                                                  const std::string& source_dir,
                                                  const ConfigLimits& limits) {
  MS_ASSIGN_OR_RETURN(StagedMerge staged,
                      ParseStagedMerge(text, source_dir, limits));
  MergeRequest r;
  r.tenant = std::move(tenant);
  r.config = std::move(staged.final);
  r.stages = std::move(staged.stages);
  return r;
}

absl::StatusOr<PlannedMerge> PlanMerge(MergeRequest request,
                                       const CheckpointRegistry& registry,
                                       int threads,
                                       const std::string& scratch_dir) {
  if (!request.stages.empty()) {
    return PlanStagedMerge(std::move(request), registry, threads, scratch_dir);
  }
  const MergeConfig& config = request.config;
  const std::string& tenant = request.tenant;
  if (config.merge_method != "ri" &&
      FindMethod(config.merge_method) == nullptr) {
    return CreateMethod(config.merge_method).status();
  }
  PlannedMerge p;
  p.canonical_yaml = config.ToYaml();
  p.data_aware = IsDataAware(config);
  if ((p.data_aware || config.merge_method == "ri") &&
      !config.modules.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.merge_method,
        " computes statistics per model and takes models:, not modules:"));
  }
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
  for (const std::string& ref : config.References()) {
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
