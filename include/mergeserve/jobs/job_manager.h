// Merge jobs: tenants' requests planned once, persisted (JobStore), run on
// the one bounded WorkExecutor under the memory budget, cancellable,
// observable (listeners), content-addressed per tenant, deletable, and
// expired after a retention period. Analyses, evaluations and sweeps run on
// the same executor (RunWork). No gRPC here; the service adapts it.
#ifndef MERGESERVE_JOBS_JOB_MANAGER_H_
#define MERGESERVE_JOBS_JOB_MANAGER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/engine/diagnostics.h"
#include "mergeserve/engine/task_vector_cache.h"
#include "mergeserve/jobs/data_aware_merge.h"
#include "mergeserve/jobs/job_store.h"
#include "mergeserve/jobs/merge_request.h"
#include "mergeserve/jobs/work_executor.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {

// Counters the metrics layer reads.
struct JobStats {
  int64_t queued = 0;
  int64_t running = 0;
  int64_t memory_in_use = 0;
};

class JobManager {
 public:
  struct Options {
    std::string data_dir;  // results under data_dir/results/<digest>
    CheckpointRegistry* registry = nullptr;
    // The database (default: DATA_DIR/mergeserve.db).
    std::shared_ptr<SqliteDatabase> db;
    // Per-tenant limits (null: none).
    const TenantQuotas* quotas = nullptr;
    int workers = 1;            // long work items running at once
    int queue_limit = 16;       // items waiting; more: RESOURCE_EXHAUSTED
    int64_t memory_budget = 0;  // bytes shared by running work; 0: no limit
    int threads_per_job = 0;    // 0: cores / workers
    int64_t cache_budget = int64_t{1} << 30;  // task-vector cache bytes
    // Where the data-aware step runs the experts' programs ("cpu", "cuda:0").
    std::string device = "cpu";
    // Finished jobs older than this are deleted with their results; 0 keeps
    // them.
    int64_t retention_ms = 0;
    // Called when a job finishes (for metrics).
    std::function<void(const JobRecord&)> on_finished;
  };
  using Listener = std::function<void(const JobRecord&)>;

  // Reopens the job table: jobs that were running are marked FAILED, queued
  // ones are planned and queued again. Starts the workers.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(Options options);
  ~JobManager();

  // Plans the request and queues it, or returns the job of the same tenant
  // that already holds (or computes) the same result.
  absl::StatusOr<JobRecord> Submit(MergeRequest request);
  absl::StatusOr<JobRecord> Get(const std::string& tenant,
                                const std::string& id) const;
  // Summaries (no request text), oldest first.
  absl::StatusOr<Page<JobRecord>> List(const std::string& tenant,
                                       std::optional<JobState> state,
                                       const PageRequest& page) const;
  absl::StatusOr<JobRecord> Cancel(const std::string& tenant,
                                   const std::string& id);
  // A finished job and its result folder (unless another job uses it);
  // FAILED_PRECONDITION while it is queued or running.
  absl::Status Delete(const std::string& tenant, const std::string& id);
  // fn gets the current record at once and after every change; returns an
  // id for Unsubscribe. fn runs on worker threads and must not block.
  absl::StatusOr<uint64_t> Subscribe(const std::string& tenant,
                                     const std::string& id, Listener fn);
  void Unsubscribe(uint64_t subscription);

  // Queues other long work (analyses, evaluations, sweeps) on the same
  // executor and budget.
  absl::StatusOr<std::shared_ptr<WorkTicket>> RunWork(WorkItem item);
  // Plans a request for analysis (off the gRPC threads, by the caller), and
  // runs it (inside a work item).
  absl::StatusOr<PlannedMerge> PlanAnalysis(MergeRequest request) const;
  absl::StatusOr<MergeDiagnostics> Analyze(PlannedMerge planned,
                                           const std::atomic<bool>* cancelled);
  // The data-aware step for `config` with this manager's cache and device.
  absl::StatusOr<PreparedMerge> Prepare(
      const std::string& tenant, const MergeConfig& config,
      const std::atomic<bool>* cancelled,
      std::function<void(const std::string&, int64_t, int64_t)> progress,
      bool measure_interference = true);

  // Stops taking jobs; running ones get `grace` to finish, then are
  // cancelled. Queued jobs stay queued for the next start.
  void Drain(std::chrono::milliseconds grace);
  // Deletes finished jobs that ended more than the retention period ago;
  // returns how many (also run periodically).
  int64_t ExpireOldJobs();
  // Queued and running jobs of `tenant`.
  absl::StatusOr<int64_t> ActiveJobs(const std::string& tenant) const {
    return store_->CountActive(tenant);
  }
  // Bytes `tenant` stores: uploads and results.
  absl::StatusOr<int64_t> StoredBytes(const std::string& tenant) const;

  JobStats stats() const;
  CacheStats cache_stats() const { return cache_->stats(); }
  // Fisher/Gram/RI results found in (hits) or added to (misses) the cache.
  const StatsCounters& stats_counters() const { return stats_counters_; }
  TaskVectorCache* cache() { return cache_.get(); }
  CheckpointRegistry* registry() { return options_.registry; }
  const Options& options() const { return options_; }

 private:
  struct Active {
    std::shared_ptr<WorkTicket> ticket;
    JobRecord record;  // the live record while queued or running
  };
  JobManager() = default;
  absl::Status Enqueue(JobRecord job, std::shared_ptr<PlannedMerge> planned,
                       bool force);
  void RunJob(const std::string& id, std::shared_ptr<PlannedMerge> planned,
              const std::atomic<bool>& cancelled);
  // Records, logs and announces the end of a job (run or not).
  void Finish(JobRecord done);
  void Update(const std::string& id, const std::function<void(JobRecord&)>& f,
              bool notify);
  void Notify(const JobRecord& r);
  void JanitorLoop();

  Options options_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<TaskVectorCache> cache_;
  std::unique_ptr<WorkExecutor> executor_;
  StatsCounters stats_counters_;
  // Held from the content-address lookup to the insert of a new job.
  std::mutex submit_mu_;
  mutable std::mutex mu_;
  std::map<std::string, Active> active_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::pair<std::string, Listener>> listeners_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_listener_ ABSL_GUARDED_BY(mu_) = 1;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::condition_variable janitor_cv_;
  std::thread janitor_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_JOB_MANAGER_H_
