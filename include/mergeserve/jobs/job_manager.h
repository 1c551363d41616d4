// Merge jobs: tenants' requests planned once, persisted (JobStore), taken
// from the shared queue by whichever replica has room (JobDispatcher), run
// on the one bounded WorkExecutor under the memory budget, cancellable from
// any replica, observable (listeners; jobs running elsewhere are followed
// through the store), content-addressed per tenant, deletable, and expired
// after a retention period. Analyses, sweeps and evaluations are jobs too
// (kinds "analyze", "sweep", "evaluate"): queued, budgeted, cancellable and
// taken over like merges; sweeps and evaluations log their partial results
// for streams on any replica (FollowEvents). No gRPC here; the service
// adapts it.
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
#include "mergeserve/jobs/job_dispatcher.h"
#include "mergeserve/jobs/job_store.h"
#include "mergeserve/jobs/merge_request.h"
#include "mergeserve/jobs/scratch_pool.h"
#include "mergeserve/jobs/work_executor.h"
#include "mergeserve/jobs/work_job.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {

// Counters the metrics layer reads.
struct JobStats {
  int64_t queued = 0;
  int64_t running = 0;
  int64_t memory_in_use = 0;
};

// What this replica did with jobs of the shared queue (for metrics).
struct ReplicaCounters {
  std::atomic<int64_t> claimed{0};      // jobs it took from the queue
  std::atomic<int64_t> leases_lost{0};  // held jobs another replica took
  std::atomic<int64_t> handed_back{0};  // jobs it returned while draining
};

// Job kinds (JobRecord::kind).
inline constexpr char kMergeJob[] = "merge";
inline constexpr char kAnalyzeJob[] = "analyze";

class JobManager {
 public:
  struct Options {
    std::string data_dir;  // results under data_dir/results/<digest>
    CheckpointRegistry* registry = nullptr;
    // The database (default: DATA_DIR/mergeserve.db).
    std::shared_ptr<Database> db;
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
    // This replica among those sharing the database, its leases, and how
    // many lost leases a job survives.
    std::string replica_id = "local";
    int64_t lease_ms = 30000;
    int max_attempts = 3;
    // Called when a job finishes (for metrics).
    std::function<void(const JobRecord&)> on_finished;
  };
  using Listener = std::function<void(const JobRecord&)>;

  // Opens the job table; jobs this replica held before it restarted go
  // back to the queue (another attempt). Starts the workers and claiming.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(Options options);
  ~JobManager();

  // Plans the request and queues it, or returns the job of the same tenant
  // that already holds (or computes) the same result.
  absl::StatusOr<JobRecord> Submit(MergeRequest request);
  // The same for an analysis (diagnostics without a result folder): a job
  // of kind "analyze" whose `result` holds DiagnosticsToJson when it
  // succeeds; the same request gives the same job while it exists.
  absl::StatusOr<JobRecord> SubmitAnalysis(MergeRequest request);
  // Queues a validated sweep or evaluation (see SubmitSweep and
  // SubmitEvaluation), or returns the tenant's job with the same digest
  // (queued, running, or succeeded).
  absl::StatusOr<JobRecord> SubmitWorkJob(WorkJobRequest request);
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
  // Follows a job to its end: on_change gets every record (the current one
  // at once), on_end the final one, once; then the subscription ends.
  // Stop() stops following; it returns false when on_end already ran (or
  // runs now).
  class EndWait {
   public:
    bool Stop();
    bool ended() {
      std::lock_guard<std::mutex> lock(mu_);
      return ended_;
    }

   private:
    friend class JobManager;
    JobManager* jobs_ = nullptr;
    std::mutex mu_;
    uint64_t subscription_ ABSL_GUARDED_BY(mu_) = 0;
    bool ended_ ABSL_GUARDED_BY(mu_) = false;
  };
  absl::StatusOr<std::shared_ptr<EndWait>> FollowToEnd(
      const std::string& tenant, const std::string& id, Listener on_change,
      Listener on_end);

  // FollowToEnd that also delivers the job's logged events after `after`,
  // in order, each once: those a record announces right after on_change
  // got it, and all of them before on_end.
  using EventListener = std::function<void(const JobLogEntry&)>;
  absl::StatusOr<std::shared_ptr<EndWait>> FollowEvents(
      const std::string& tenant, const std::string& id, int64_t after,
      EventListener on_event, Listener on_change, Listener on_end);

  // Queues other long work on the same executor and budget (tests).
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
  // handed back to the queue for another replica (or the next start).
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
  const ReplicaCounters& replica_counters() const { return replica_counters_; }
  TaskVectorCache* cache() { return cache_.get(); }
  // Sweep points' folders kept for later points to overwrite.
  ScratchPool* scratch_pool() { return scratch_pool_.get(); }
  CheckpointRegistry* registry() { return options_.registry; }
  const Options& options() const { return options_; }

 private:
  // Why a held job was stopped: decides what its end records.
  enum class StopReason { kNone, kUser, kLeaseLost, kShutdown };
  struct Active {
    std::shared_ptr<WorkTicket> ticket;
    JobRecord record;  // the live record while it is held
    StopReason stop = StopReason::kNone;
    bool finishing = false;  // its outcome is being recorded
  };
  JobManager() = default;
  // Marks a held job RUNNING (a worker took it), logs and announces it.
  std::optional<JobRecord> MarkStarted(const std::string& id);
  // Runs a job the dispatcher claimed: its plan (made at submission on this
  // replica, or made again from the stored request) goes to the executor.
  void Start(JobRecord claimed);
  std::shared_ptr<PlannedMerge> TakePlan(const JobRecord& job);
  // A sweep's or evaluation's plan: made at submission here (first
  // attempt), else made again from the stored request.
  absl::StatusOr<std::shared_ptr<PlannedWorkJob>> TakeWorkPlan(
      const JobRecord& job);
  // Submission steps every kind shares: the tenant's job limit, a job with
  // the same digest to return instead, room in the queue and the budget,
  // and the insert (atomic across replicas).
  absl::Status Admit(const std::string& tenant);
  // The job to return instead of a new one, if any; `stale` gets a
  // finished one whose result is gone (the insert replaces it).
  absl::StatusOr<std::optional<JobRecord>> Reusable(
      const std::string& tenant, const std::string& digest,
      std::optional<JobRecord>* stale);
  absl::Status CheckRoom(int64_t memory, const char* what);
  absl::StatusOr<JobRecord> Enqueue(JobRecord j,
                                    const std::optional<JobRecord>& stale);
  absl::StatusOr<JobRecord> SubmitKind(const std::string& kind,
                                       MergeRequest request);
  // A folder for the stages of a request of several merges: `what` says
  // which use ("plan-", "run-"), `id` makes it unique.
  std::string StageScratch(const std::string& what,
                           const std::string& id) const;
  // Removes stage folders earlier attempts of job `id` left, except `mine`.
  void RemoveEarlierStageRuns(const std::string& id,
                              const std::string& mine) const;
  absl::StatusOr<PlannedMerge> PlanKind(const std::string& kind,
                                        MergeRequest request) const;
  void RunJob(const std::string& id, std::shared_ptr<PlannedMerge> planned,
              const std::atomic<bool>& cancelled);
  void RunAnalysis(const std::string& id, std::shared_ptr<PlannedMerge> planned,
                   const std::atomic<bool>& cancelled);
  void RunWorkJob(const std::string& id,
                  std::shared_ptr<PlannedWorkJob> planned,
                  const std::atomic<bool>& cancelled);
  // Records the end of a held analysis, sweep or evaluation: its result
  // (JSON) or why it has none.
  void EndWithResult(const std::string& id,
                     std::chrono::steady_clock::time_point start,
                     absl::StatusOr<std::string> result);
  // The run of a job of this replica: a copy of its live record.
  std::optional<JobRecord> Held(const std::string& id) const;
  // Records, logs and announces the end of a held job (run or not): the
  // outcome, or back to the queue when this replica stopped without one.
  void Finish(JobRecord done, StopReason stop);
  // Records a held job that could not start (no plan, never fits here).
  void FailBeforeRun(JobRecord job, const absl::Status& why);
  void Update(const std::string& id, const std::function<void(JobRecord&)>& f,
              bool notify);
  void Notify(const JobRecord& r);
  void OnLeaseCheck(const LeaseCheck& c);
  // Sends watchers of jobs held by other replicas what changed in the store.
  void PollRemote();
  void JanitorLoop();

  Options options_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<TaskVectorCache> cache_;
  std::unique_ptr<ScratchPool> scratch_pool_;
  std::unique_ptr<WorkExecutor> executor_;
  std::unique_ptr<JobDispatcher> dispatcher_;
  StatsCounters stats_counters_;
  ReplicaCounters replica_counters_;
  mutable std::mutex mu_;
  std::map<std::string, Active> active_ ABSL_GUARDED_BY(mu_);
  // Plans of jobs submitted here, until a replica claims them (bounded).
  std::map<std::string, std::shared_ptr<PlannedMerge>> plans_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<PlannedWorkJob>> work_plans_
      ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::pair<std::string, Listener>> listeners_
      ABSL_GUARDED_BY(mu_);
  // Last record sent to watchers of a job this replica does not hold.
  std::map<std::string, JobRecord> remote_seen_ ABSL_GUARDED_BY(mu_);
  uint64_t next_listener_ ABSL_GUARDED_BY(mu_) = 1;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::condition_variable janitor_cv_;
  std::thread janitor_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_JOB_MANAGER_H_
