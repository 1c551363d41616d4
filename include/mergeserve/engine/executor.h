// Runs one merge end to end: plan, prepare the method, stream every tensor
// through it into a ShardedWriter, copy the model's side files, commit.
#ifndef MERGESERVE_ENGINE_EXECUTOR_H_
#define MERGESERVE_ENGINE_EXECUTOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/engine/merge_method.h"
#include "mergeserve/engine/merge_plan.h"

namespace mergeserve {

class DiagnosticsCollector;

struct MergeProgress {
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  uint64_t bytes_done = 0;   // output bytes written so far
  uint64_t bytes_total = 0;  // output bytes in all
  std::string phase;         // "prepare", "merge"
  std::string tensor;        // last tensor finished
  std::string stage;         // the stage being merged; "" for the final
};

struct MergeOptions {
  std::string output_dir;
  int threads = 0;  // 0: all cores
  // Upper bound for what the merge may hold in memory; 0 = unlimited. Fused
  // kernels stay far below it; whole-tensor (ATen) methods check their
  // largest tensor against it before anything is written.
  int64_t memory_budget = 0;
  uint64_t max_shard_bytes = 5ull << 30;
  bool overwrite = false;
  Backend backend = Backend::kFused;
  std::string device = "cpu";
  // Where model references point; default: paths relative to the config.
  ModelResolver resolver;
  std::function<void(const MergeProgress&)> on_progress;
  // Cache of trim thresholds shared across merges (the service's), keyed by
  // content digests that `digest` returns per model reference ("" when
  // unknown, which disables caching for that merge).
  TaskVectorCache* cache = nullptr;
  std::function<std::string(const std::string& ref)> digest;
  // What later merges will reuse (a sweep's points); see CacheHint.
  CacheHint cache_hint = CacheHint::kGuess;
  // Saved as mergeserve_config.yaml ("": the merged config's canonical
  // YAML). The service saves the request as the client sent it in canonical
  // form, not the config its data-aware step rewrote.
  std::string config_text;
  // Compute everything but write nothing (no output folder is created).
  bool dry_run = false;
  // Fail (OUT_OF_RANGE, naming the tensor) instead of writing a NaN or an
  // infinity, e.g. from overflowing weights. The server always sets it.
  bool reject_non_finite = false;
  // Receives per-chunk diagnostic sums (task-vector methods), or null.
  DiagnosticsCollector* diagnostics = nullptr;
  const std::atomic<bool>* cancelled = nullptr;
  // Called once the output is written and synced, right before it is
  // renamed into place; an error abandons it (the server checks there that
  // its replica still holds the job's lease).
  std::function<absl::Status()> before_commit;
  // Hash every output file while it is synced (MergeSummary::file_digests);
  // the server records them without reading the result again.
  bool digest_outputs = false;
  // Drop the written shards from the page cache after the sync (the server:
  // results should not evict the inputs the next merge reads).
  bool uncache_outputs = false;
  // Sync the output before it is renamed into place. Scratch outputs that
  // are read once and removed (sweep points, stages, RI's unadapted merge)
  // turn it off: their pages need never reach the disk.
  bool durable = true;
  // An earlier scratch output's folder whose files the result overwrites in
  // place (ShardedWriter::Options::recycle_dir; durable false only).
  std::string recycle_dir;
  // Further results of the same merge with another λ (the global `lambda`)
  // or other weights for some models, written in the same pass from the
  // same trimmed task vectors: each folder holds what a merge with those
  // numbers (and config_text) would write, so a sweep's row of points reads
  // the experts once. Only where CanWriteVariants(); not with dry_run or
  // diagnostics.
  struct Variant {
    std::string output_dir;
    std::optional<double> lambda;           // unset: the merge's
    std::map<std::string, double> weights;  // by model reference
    std::string config_text;                // as MergeOptions::config_text
    std::string recycle_dir;                // as MergeOptions::recycle_dir
  };
  std::vector<Variant> variants;
};

struct MergeSummary {
  std::string method;
  std::string output_dir;
  int64_t tensors = 0;
  int64_t merged = 0;
  int64_t copied = 0;
  int shards = 0;
  uint64_t bytes_read = 0;     // tensor bytes read from the inputs
  uint64_t bytes_written = 0;  // tensor bytes written
  double seconds = 0;
  int64_t peak_rss_bytes = 0;  // of the whole process
  // EstimateMergeMemory for this merge: the bound the server reserves.
  int64_t memory_estimate_bytes = 0;
  // What the planner changed without failing (MergePlan::warnings).
  std::vector<std::string> warnings;
  // (file name, hex SHA-256) of the output folder, sorted; with
  // MergeOptions::digest_outputs only.
  std::vector<std::pair<std::string, std::string>> file_digests;
};

absl::StatusOr<MergeSummary> RunMerge(const MergeConfig& config,
                                      const MergeOptions& options);
// The same on a plan already made and checked (the service plans a request
// once, when it is submitted). options.resolver is not used.
absl::StatusOr<MergeSummary> RunMergePlan(std::unique_ptr<MergePlan> plan,
                                          const MergeOptions& options);

// Whether a merge of `plan` on `backend` can write MergeOptions::variants
// (with weight changes where `weights`): the task-vector methods on the
// fused backend; weight changes not where a tied election takes the
// majority sign (a census under the merge's own weights).
bool CanWriteVariants(const MergePlan& plan, Backend backend, bool weights);
// What each variant adds to EstimateMergeMemory (its output regions).
int64_t VariantMemory(const MergePlan& plan, int threads);

// Writes into `dir` what RunMergePlan would write for `plan` (the same side
// files, tensor names, shapes and dtypes, in one file) without tensor data:
// a sparse file that reads as zeros and takes no disk. A stage of a
// multi-merge file is planned on its predecessors' sketches before any runs.
absl::Status WritePlanSketch(const MergePlan& plan, const std::string& dir);

// Memory a merge will need beyond the mapped inputs: whole-tensor methods
// hold every model's copy of the largest tensor plus temporaries; streaming
// ones a few chunks per thread.
int64_t EstimateMergeMemory(const MergePlan& plan, Backend backend,
                            int threads);

// Peak resident set size of this process so far.
int64_t PeakRssBytes();

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_EXECUTOR_H_
