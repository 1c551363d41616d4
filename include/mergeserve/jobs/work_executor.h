// The one bounded executor for all long work: merges, analyses,
// evaluations and sweeps. A fixed set of workers takes items in arrival
// order; an item starts only when a worker is free and the memory it
// reserves (an upper bound its submitter computed) fits the shared budget
// beside what is running. Submission is refused up front (RESOURCE_EXHAUSTED)
// when the queue is full or an item could never fit. Nothing long runs on
// gRPC's threads or on a detached thread: the executor owns every worker and
// joins them.
#ifndef MERGESERVE_JOBS_WORK_EXECUTOR_H_
#define MERGESERVE_JOBS_WORK_EXECUTOR_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

namespace mergeserve {

struct WorkItem {
  std::string kind;    // "merge", "analyze", "evaluate", "sweep"
  std::string label;   // for logs: a job id, a tenant
  int64_t memory = 0;  // reserved while it runs
  // The work. `cancelled` turns true on Cancel() or when the executor
  // drains; the work should stop soon after.
  std::function<void(const std::atomic<bool>& cancelled)> run;
  // Called (instead of run) for an item that never started: cancelled while
  // queued, or still queued when the executor shut down.
  std::function<void(const absl::Status& why)> abandon;
};

// A submitted item; cancel it while queued or running.
class WorkTicket {
 public:
  void Cancel();
  bool cancelled() const { return cancelled_.load(); }

 private:
  friend class WorkExecutor;
  std::atomic<bool> cancelled_{false};
  // Set while queued: Cancel() then also removes it from the queue.
  std::atomic<class WorkExecutor*> owner_{nullptr};
  uint64_t seq_ = 0;
};

struct WorkStats {
  int64_t queued = 0;
  int64_t running = 0;
  int64_t memory_in_use = 0;
};

class WorkExecutor {
 public:
  struct Options {
    int workers = 1;
    int queue_limit = 16;       // items waiting; more: RESOURCE_EXHAUSTED
    int64_t memory_budget = 0;  // 0: unlimited
  };
  explicit WorkExecutor(Options options);
  // Cancels what runs, abandons what waits, joins the workers.
  ~WorkExecutor();
  WorkExecutor(const WorkExecutor&) = delete;
  WorkExecutor& operator=(const WorkExecutor&) = delete;

  // Queues `item`. `force` skips the queue limit (jobs accepted before a
  // restart). RESOURCE_EXHAUSTED names the limit hit; UNAVAILABLE while
  // draining.
  absl::StatusOr<std::shared_ptr<WorkTicket>> Submit(WorkItem item,
                                                     bool force = false);
  // Stops starting items; running ones get `grace`, then are cancelled and
  // awaited; queued ones are abandoned (UNAVAILABLE).
  void Drain(std::chrono::milliseconds grace);
  WorkStats stats() const;
  const Options& options() const { return options_; }

 private:
  friend class WorkTicket;
  struct Entry {
    WorkItem item;
    std::shared_ptr<WorkTicket> ticket;
  };
  void Loop();
  void CancelQueued(uint64_t seq);
  bool FitsLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<WorkTicket>> running_ ABSL_GUARDED_BY(mu_);
  int64_t memory_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_WORK_EXECUTOR_H_
