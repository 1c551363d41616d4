// The service's data-aware step: before the engine merges, it computes what
// a method needs by running the experts' programs on their tasks' datasets:
//   fisher   without per-model `fisher:`  the diagonal Fisher of each expert
//   regmean  without per-model `gram:`    the Gram matrices of each expert
//   ri       (merge_method: ri)           adapted experts, then `ri_method`
// Results are cached under the stats folder, keyed by the content digests of
// the checkpoint, program and dataset and by the settings, so sweeps and
// repeated merges compute each statistic once. The engine then sees a plain
// config whose `fisher:`/`gram:`/model references name "stats:<key>".
#ifndef MERGESERVE_JOBS_DATA_AWARE_MERGE_H_
#define MERGESERVE_JOBS_DATA_AWARE_MERGE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/engine/merge_plan.h"
#include "mergeserve/eval/ri_adapter.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {

// The model entries of a request that are not its base: the experts.
std::vector<std::string> ExpertsOf(const MergeConfig& config);

// True when the request needs the data-aware step.
bool IsDataAware(const MergeConfig& config);

// Checks, without running anything, that every expert the step must run has
// a program and the datasets it needs (FAILED_PRECONDITION naming what is
// missing), and returns a stand-in config the engine can plan to validate
// the rest of the request.
absl::StatusOr<MergeConfig> DataAwarePlanningConfig(
    const MergeConfig& config, const CheckpointRegistry& registry,
    const std::string& tenant);

// Lines naming the programs and datasets the step reads, with their content
// digests, for a request's content address ("" when not data-aware).
absl::StatusOr<std::string> DataAwareDigestLines(
    const MergeConfig& config, const CheckpointRegistry& registry,
    const std::string& tenant);

struct StatsCounters {
  std::atomic<int64_t> hits{0};
  std::atomic<int64_t> misses{0};
};

struct DataAwareOptions {
  const CheckpointRegistry* registry = nullptr;
  std::string tenant;     // whose checkpoints and datasets the names are
  int threads = 0;        // for the extra merge that measures ξ
  std::string stats_dir;  // the cache
  std::string device = "cpu";
  StatsCounters* counters = nullptr;
  // RI: report ξ before (an extra merge of the unadapted experts) and keep
  // the adapter to measure ξ after. Sweeps and diagnostics turn it off.
  bool measure_interference = true;
  // phase: "fisher <model>", "gram <model>", "ri <model>".
  std::function<void(const std::string& phase, int64_t done, int64_t total)>
      progress;
  const std::atomic<bool>* cancelled = nullptr;
};

struct PreparedMerge {
  MergeConfig config;      // what the engine runs
  ModelResolver resolver;  // registry names and "stats:<key>"
  // Content digests for the task-vector cache ("stats:<key>" → its key).
  std::function<std::string(const std::string& ref)> digest;
  std::map<std::string, double> metrics;  // e.g. ri.interference_before
  std::unique_ptr<RiAdapter> ri;  // measures ξ of the result, when asked
  // No data-aware step: `config` is the request as it came.
  bool plain = false;
};

// A plain request passes through unchanged (with the registry's resolver).
absl::StatusOr<PreparedMerge> PrepareDataAware(const MergeConfig& config,
                                               const DataAwareOptions& options);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_DATA_AWARE_MERGE_H_
