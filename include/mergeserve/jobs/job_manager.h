// Merge jobs: a bounded queue, a pool of workers that run RunMerge, a shared
// memory budget, cancellation, progress listeners, content-addressed results
// and persistence in SQLite. No gRPC here; the service adapts it.
#ifndef MERGESERVE_JOBS_JOB_MANAGER_H_
#define MERGESERVE_JOBS_JOB_MANAGER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/diagnostics.h"
#include "mergeserve/engine/task_vector_cache.h"
#include "mergeserve/jobs/data_aware_merge.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/store/sqlite_database.h"

namespace mergeserve {

enum class JobState {
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5
};
bool IsFinal(JobState s);

struct ResultFileInfo {
  std::string name;
  int64_t size_bytes = 0;
  std::string sha256;
};

struct JobRecord {
  std::string id;
  JobState state = JobState::kQueued;
  std::string config_yaml;
  std::string request_digest;
  int64_t create_ms = 0, start_ms = 0, end_ms = 0;
  int64_t tensors_done = 0, tensors_total = 0;
  int error_code = 0;  // absl/gRPC canonical code
  std::string error_message;
  std::vector<ResultFileInfo> files;
  int64_t result_bytes = 0;
  double seconds = 0;
  int64_t bytes_read = 0;  // checkpoint bytes the merge read
  std::string result_dir;  // server-side folder of the merged model
  // What a running job is doing before its tensors: "fisher math-expert"...
  std::string phase;
  int64_t phase_done = 0, phase_total = 0;
  // Numbers the data-aware step reports (ri.interference_before/after...).
  std::map<std::string, double> metrics;
};

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
    int workers = 1;
    int queue_limit = 16;
    int64_t memory_budget = 0;  // bytes shared by running jobs; 0: no limit
    int threads_per_job = 0;    // 0: cores / workers
    int64_t cache_budget = int64_t{1} << 30;  // task-vector cache bytes
    // Where the data-aware step runs the experts' programs ("cpu", "cuda:0").
    std::string device = "cpu";
    // Called when a job finishes (for metrics).
    std::function<void(const JobRecord&)> on_finished;
  };
  using Listener = std::function<void(const JobRecord&)>;

  // Reopens the job table: jobs that were running are marked FAILED, queued
  // ones are queued again. Starts the workers.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(Options options);
  ~JobManager();

  // Validates the YAML against the registry and queues it, or returns the
  // job that already holds (or computes) the same result.
  absl::StatusOr<JobRecord> Submit(const std::string& config_yaml);
  absl::StatusOr<JobRecord> Get(const std::string& id) const;
  // Runs the merge without storing it and returns its diagnostics (uses the
  // task-vector cache; does not take a worker).
  absl::StatusOr<MergeDiagnostics> Analyze(const std::string& config_yaml);
  absl::StatusOr<std::vector<JobRecord>> List(
      std::optional<JobState> state) const;
  absl::StatusOr<JobRecord> Cancel(const std::string& id);
  // fn gets the current record at once and after every change; returns an
  // id for Unsubscribe. fn runs on worker threads and must not block.
  absl::StatusOr<uint64_t> Subscribe(const std::string& id, Listener fn);
  void Unsubscribe(uint64_t subscription);
  // Stops taking jobs; running ones get `grace` to finish, then are
  // cancelled. Queued jobs stay queued for the next start.
  void Drain(std::chrono::milliseconds grace);
  JobStats stats() const;
  CacheStats cache_stats() const { return cache_->stats(); }
  // Fisher/Gram/RI results found in (hits) or added to (misses) the cache.
  const StatsCounters& stats_counters() const { return stats_counters_; }
  TaskVectorCache* cache() { return cache_.get(); }
  CheckpointRegistry* registry() { return options_.registry; }
  const Options& options() const { return options_; }
  // The data-aware step for `config` with this manager's cache and device.
  absl::StatusOr<PreparedMerge> Prepare(
      const MergeConfig& config, const std::atomic<bool>* cancelled,
      std::function<void(const std::string&, int64_t, int64_t)> progress,
      bool measure_interference = true);

 private:
  struct Running {
    std::shared_ptr<std::atomic<bool>> cancel;
    JobRecord record;
  };
  JobManager() = default;
  void WorkerLoop();
  void RunJob(JobRecord job, std::shared_ptr<std::atomic<bool>> cancel);
  absl::Status Persist(const JobRecord& r);
  void Notify(const JobRecord& r);
  absl::StatusOr<JobRecord> Load(const std::string& id) const;

  Options options_;
  std::unique_ptr<SqliteDatabase> db_;
  std::unique_ptr<TaskVectorCache> cache_;
  StatsCounters stats_counters_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::map<std::string, Running> running_;
  std::map<uint64_t, std::pair<std::string, Listener>> listeners_;
  uint64_t next_listener_ = 1;
  int64_t memory_in_use_ = 0;
  bool draining_ = false;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_JOB_MANAGER_H_
