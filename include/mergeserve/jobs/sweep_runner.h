// Sweeps: one merge request over a grid (lambda × density × any other
// global number, e.g. alpha or ridge, × per-model weights), each point
// merged into a scratch folder and evaluated on the tasks' validation data
// (eval data where a task has none). Points share the job manager's
// task-vector cache and data-aware statistics, so only what changes is
// recomputed.
#ifndef MERGESERVE_JOBS_SWEEP_RUNNER_H_
#define MERGESERVE_JOBS_SWEEP_RUNNER_H_

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_method.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/jobs/task_evaluator.h"

namespace mergeserve {

// One axis of the grid: a global parameter ("lambda", "density", "alpha",
// ...) or "weight@MODEL" for one model's weight.
struct SweepAxis {
  std::string parameter;
  std::vector<double> values;
};
using SweepGrid = std::vector<SweepAxis>;

struct SweepPoint {
  int index = 0;
  std::vector<std::pair<std::string, double>> values;  // one per axis
  std::vector<TaskMetrics> tasks;
  double mean_accuracy = 0;
  double merge_seconds = 0;  // including the data-aware step
  double eval_seconds = 0;
};

struct SweepSummary {
  int best_index = -1;
  SweepPoint best;
  double seconds = 0;
  int64_t trim_cache_hits = 0, trim_cache_misses = 0;
  int64_t stats_hits = 0, stats_misses = 0;
};

struct SweepOptions {
  std::vector<std::string> tasks;  // empty: the experts' tasks
  int64_t max_examples = 0;        // per task
  // What runs now; `done` of `total` points are finished.
  std::function<void(const std::string& phase, int64_t done, int64_t total)>
      on_phase;
  // A finished point; an error stops the sweep with it.
  std::function<absl::Status(const SweepPoint&)> on_point;
  const std::atomic<bool>* cancelled = nullptr;
  // Points an earlier run finished (by index): taken as they are, neither
  // merged nor evaluated nor reported again.
  std::map<int, SweepPoint> done;
  // Points of one row (the fastest axis's values) merged in one pass
  // (SweepPlan's fused_points); 1: each point alone.
  int64_t fused_points = 1;
};

struct SweepPlan {
  int64_t memory = 0;  // a point may hold (merge or evaluation)
  int64_t points = 0;
  // Where λ or one model's weight varies fastest and the method writes
  // such variants (CanWriteVariants), a row's points are merged in one pass
  // from one read of the experts, this many at most (results of up to
  // kFusedScratchBytes in scratch at once); else 1.
  int64_t fused_points = 1;
  // Content address of the merge request and everything the evaluation
  // reads (heads, selection data); the grid and options are not in it.
  std::string digest;
};

// What each point's merge keeps for the later ones: the merged update where
// λ varies fastest (kUpdate; a row merged in batches of several points
// keeps none, and each batch merges from the experts again), each expert's
// trimmed τ where only weights change over more than kMinPointsToKeepTrimmed
// points (kTrimmed, from the first point on), neither where densities change or
// a shorter sweep changes weights (kNone), else the server's guess (kGuess).
inline constexpr size_t kMinPointsToKeepTrimmed = 16;
// Scratch a fused row of points may fill with results before they are
// evaluated (then kept in the ScratchPool, which a batch empties of what it
// does not take, so scratch stays near this bound). They are never synced,
// and should stay in the page
// cache: well under the kernel's default threshold for background
// writeback (10% of available memory, 2.2 GB on a 24 GB machine). With 4 GiB
// a row of ten 321 MiB results was written back to disk while it was
// evaluated, and removing it waited for that (1.9 s of a 7.4 s sweep).
inline constexpr int64_t kFusedScratchBytes = int64_t{7} << 28;  // 1.75 GiB
inline constexpr int64_t kMaxFusedPoints = 16;
CacheHint SweepCacheHint(const SweepGrid& grid);

// Validates the request and the grid (every point's config, the tasks'
// heads and data) without running anything.
absl::StatusOr<SweepPlan> PlanSweep(JobManager& jobs,
                                    const MergeRequest& request,
                                    const SweepGrid& grid,
                                    const SweepOptions& options);

absl::StatusOr<SweepSummary> RunSweep(JobManager& jobs,
                                      const MergeRequest& request,
                                      const SweepGrid& grid,
                                      const SweepOptions& options);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_SWEEP_RUNNER_H_
