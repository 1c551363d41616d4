// A merge request as the jobs layer takes it, and what validating it once
// makes of it. The service parses a request (YAML or the structured form)
// into a MergeConfig once; PlanMerge checks it against the tenant's
// registry, opens and checks every input (the plan the merge then runs
// on), bounds its memory and output, and computes its content address.
// Nothing here is repeated when the job runs.
#ifndef MERGESERVE_JOBS_MERGE_REQUEST_H_
#define MERGESERVE_JOBS_MERGE_REQUEST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/engine/merge_plan.h"
#include "mergeserve/engine/merge_stages.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {

struct MergeRequest {
  std::string tenant;
  MergeConfig config;  // the merge whose output is the result
  // Named merges `config` reads (a file of several merges, mergekit-multi),
  // in the order they run. Their outputs live only while the job runs.
  std::vector<MergeConfig> stages;

  StagedMerge Staged() const { return {stages, config}; }
};

// A request of one merge or several, as sent in YAML.
absl::StatusOr<MergeRequest> MergeRequestFromYaml(
    std::string tenant, const std::string& text, const std::string& source_dir,
    const ConfigLimits& limits = ConfigLimits());

struct PlannedMerge {
  MergeRequest request;
  std::string canonical_yaml;  // what is stored, hashed and saved
  // The plan the merge runs on. Data-aware requests are planned with
  // stand-ins for their statistics (the real plan follows the statistics);
  // `runnable` says whether this plan is the one to run.
  std::unique_ptr<MergePlan> plan;
  bool runnable = false;
  bool data_aware = false;
  std::string digest;        // content address, tenant included
  int64_t memory = 0;        // upper bound while it runs
  int64_t output_bytes = 0;  // bytes the result will take
  // Bytes a request of several merges holds in scratch while it runs (its
  // stages' outputs), counted against the tenant's storage with the result.
  int64_t scratch_bytes = 0;
  int64_t tensors_total = 0;
};

// `threads`: the worker threads the merge will use (for the memory bound).
// A request of several merges plans each stage on sketches of the stages
// it reads, written under `scratch_dir` (a folder only this call uses,
// removed before it returns); such a plan is not runnable, the job plans
// each stage again when the one before has run. Data-aware methods take
// one merge per request.
absl::StatusOr<PlannedMerge> PlanMerge(MergeRequest request,
                                       const CheckpointRegistry& registry,
                                       int threads,
                                       const std::string& scratch_dir = "");

// Memory the data-aware step of `config` may hold (LibTorch programs,
// gradients, optimiser state, Gram matrices): an estimate from the
// checkpoints' parameter counts and shapes, 0 for plain merges.
absl::StatusOr<int64_t> EstimateDataAwareMemory(
    const MergeConfig& config, const CheckpointRegistry& registry,
    const std::string& tenant);

// Memory an evaluation on the heads of `checkpoints` may hold: the largest
// program's parameters a few times over, plus batch activations.
absl::StatusOr<int64_t> EstimateEvaluationMemory(
    const CheckpointRegistry& registry, const std::string& tenant,
    const std::vector<std::string>& checkpoints);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_MERGE_REQUEST_H_
