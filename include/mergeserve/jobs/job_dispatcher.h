// The queue/lease side of jobs: each replica claims queued jobs from the
// shared job table while it has room, renews the leases of the jobs it
// holds by heartbeats (recording their progress, learning of cancels made
// through other replicas), and puts the jobs of replicas that stopped
// renewing back in the queue. On PostgreSQL a third thread LISTENs, so a
// job queued on another replica is claimed, and a cancel made elsewhere
// reaches the running replica, without waiting for a poll. Threads are
// owned and joined here.
#ifndef MERGESERVE_JOBS_JOB_DISPATCHER_H_
#define MERGESERVE_JOBS_JOB_DISPATCHER_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "mergeserve/jobs/job_store.h"

namespace mergeserve {

class JobDispatcher {
 public:
  struct Options {
    std::string replica;
    int64_t lease_ms = 30000;
    int max_attempts = 3;
    // How often an idle replica looks for work (a local submission wakes
    // it at once) and watchers of other replicas' jobs are refreshed.
    std::chrono::milliseconds poll{250};
  };
  struct Hooks {
    // Whether this replica may take another job now.
    std::function<bool()> has_capacity;
    // Runs a job this replica just claimed.
    std::function<void(JobRecord)> start;
    // This replica's claimed jobs, with their live progress.
    std::function<std::vector<JobRecord>()> held;
    // A held job was lost (another replica took it) or cancelled elsewhere.
    std::function<void(const LeaseCheck&)> on_check;
    // Jobs that failed after too many lost leases.
    std::function<void(const std::vector<std::string>&)> on_failed;
    // Called every poll and on every change notified (refreshing watchers
    // of jobs held elsewhere).
    std::function<void()> on_poll;
  };
  JobDispatcher(JobStore* store, Options options, Hooks hooks);
  // Stops and joins the threads.
  ~JobDispatcher();
  // Starts the threads (hooks may then run at once).
  void Start();
  JobDispatcher(const JobDispatcher&) = delete;
  JobDispatcher& operator=(const JobDispatcher&) = delete;

  // A job was queued (or room freed up): look for work now.
  void Wake();
  // Draining: claim nothing more; heartbeats go on for what is held.
  void StopClaiming();
  const Options& options() const { return options_; }
  std::chrono::milliseconds heartbeat_period() const;

 private:
  void ClaimLoop();
  void HeartbeatLoop();
  void ListenLoop();

  JobStore* const store_;
  const Options options_;
  const Hooks hooks_;
  const int64_t start_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool claiming_ ABSL_GUARDED_BY(mu_) = true;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<DatabaseListener> listener_;  // null: poll only
  std::chrono::milliseconds poll_;
  std::thread claimer_, heartbeat_, listen_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_JOB_DISPATCHER_H_
