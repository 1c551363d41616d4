// Merge jobs in the server's database: one row per job, per tenant, with
// the request (canonical YAML), its content address, progress, outcome and
// result files. Lists are paged and return summaries (no request text), so
// no job, however large its request, can break listing for anyone.
//
// The table is also the queue every replica sharing the database takes
// work from: a replica claims a queued job (SKIP LOCKED on PostgreSQL, the
// write lock on SQLite) under a lease it renews by heartbeats; every write
// of a running job is fenced by (replica, attempt), so a replica that lost
// its lease cannot overwrite the record of the one that took over.
#ifndef MERGESERVE_JOBS_JOB_STORE_H_
#define MERGESERVE_JOBS_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/store/database.h"
#include "mergeserve/store/page_token.h"

namespace mergeserve {

enum class JobState {
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5
};
bool IsFinal(JobState s);
const char* JobStateName(JobState s);

struct ResultFileInfo {
  std::string name;
  int64_t size_bytes = 0;
  std::string sha256;
};

struct JobRecord {
  std::string tenant;
  std::string id;
  JobState state = JobState::kQueued;
  std::string config_yaml;  // canonical (empty in list summaries)
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
  std::string method;  // merge_method, for summaries
  // "merge" (a result folder) or "analyze" (diagnostics in `result`).
  std::string kind = "merge";
  std::string result;  // analyze: the diagnostics as JSON (not in lists)
  // The replica that runs (ran) it and which run this is (1 = first).
  std::string replica;
  int attempt = 0;
  int64_t lease_until_ms = 0;  // RUNNING: when the lease lapses
  bool cancel_requested = false;
  // Sweeps and evaluations: their parameters beyond the merge config (JSON,
  // not in lists), and the sequence number of their last logged event.
  std::string params;
  int64_t events = 0;
};

// One entry of a job's event log: a sweep point, an evaluated task.
struct JobLogEntry {
  int64_t seq = 0;  // 1, 2, ... in the order they were logged
  int attempt = 0;  // the run that logged it
  std::string payload;
};

// What a heartbeat learns about one of the replica's running jobs.
struct LeaseCheck {
  std::string id;
  int attempt = 0;                // the run it is about (0: any)
  bool lost = false;              // another replica took it, or it ended
  bool cancel_requested = false;  // cancelled through some replica
};

// A replica seen in the database: its last heartbeat.
struct ReplicaRecord {
  std::string id;
  int64_t start_ms = 0, seen_ms = 0;
};

// A record as callers see it: a job claimed by a replica but not yet
// started by one of its workers (RUNNING, start 0) is still QUEUED.
JobRecord Shown(JobRecord r);

class JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      std::shared_ptr<Database> db);

  // Writes the whole record (new jobs; jobs that never ran).
  absl::Status Put(const JobRecord& r);
  // Inserts `r` unless a job of the same tenant with the same digest that
  // `reuse` accepts exists: returns that one. Atomic across replicas.
  absl::StatusOr<JobRecord> InsertUnlessSame(
      const JobRecord& r, const std::function<bool(const JobRecord&)>& reuse);

  // The queue. Claims the oldest queued job for `replica` (attempt + 1,
  // lease until now + lease_ms); none: nullopt.
  absl::StatusOr<std::optional<JobRecord>> Claim(const std::string& replica,
                                                 int64_t lease_ms);
  // Running jobs whose lease lapsed go back to the queue, or fail once they
  // have been tried `max_attempts` times, or end CANCELLED when a cancel
  // was asked for meanwhile; returns the ids that ended.
  absl::StatusOr<std::vector<std::string>> RequeueExpired(int max_attempts);
  // Renews the leases of `replica`'s running jobs and records their
  // progress; says which were lost or asked to cancel.
  absl::StatusOr<std::vector<LeaseCheck>> Heartbeat(
      const std::string& replica, const std::vector<JobRecord>& running,
      int64_t lease_ms);
  // Writes the final record if `replica` still holds the job's lease at
  // `attempt`; ABORTED otherwise (nothing written).
  absl::Status Complete(const JobRecord& done);
  // A worker started the claimed job at r.start_ms (fenced). Until then a
  // claimed job has start_ms 0 and shows as QUEUED (see Shown).
  absl::Status MarkStarted(const JobRecord& r);
  // OK while `replica` holds the job's lease at `attempt`; ABORTED
  // otherwise (checked right before a result is renamed into place).
  absl::Status CheckLease(const std::string& id, const std::string& replica,
                          int attempt);
  // Appends to the job's event log if `holder.replica` still holds the
  // job's lease at `holder.attempt` (ABORTED otherwise); returns its seq.
  absl::StatusOr<int64_t> AppendEvent(const JobRecord& holder,
                                      const std::string& payload);
  // The job's events after `after`, oldest first (kept until it is
  // deleted; a later attempt resumes from them).
  absl::StatusOr<std::vector<JobLogEntry>> Events(const std::string& id,
                                                  int64_t after) const;
  // A draining replica hands a job back: QUEUED again, this run not counted.
  absl::Status Release(const std::string& id, const std::string& replica,
                       int attempt);
  // Cancels a queued job at once (returns true); marks a running one so
  // its replica stops it at its next heartbeat (returns false).
  absl::StatusOr<bool> RequestCancel(const std::string& tenant,
                                     const std::string& id);
  // Jobs a replica of this id left RUNNING before it restarted (it cannot
  // still run them): back to the queue at once.
  absl::Status RequeueOwn(const std::string& replica);
  // Notifications of queue and job changes from every replica: payloads
  // "queued", "job:<id>" (changed), "cancel:<id>" (cancel requested).
  // nullptr where the database has none (SQLite): poll instead.
  absl::StatusOr<std::unique_ptr<DatabaseListener>> Listen() const;
  // Liveness of replicas (for lease-aware cleanup of shared folders).
  absl::Status TouchReplica(const std::string& replica, int64_t start_ms);
  absl::StatusOr<std::vector<ReplicaRecord>> Replicas() const;
  // Ids of replicas other than `except` seen within `within_ms`.
  absl::StatusOr<std::vector<std::string>> LiveReplicas(
      const std::string& except, int64_t within_ms) const;
  // NOT_FOUND also for another tenant's job.
  absl::StatusOr<JobRecord> Get(const std::string& tenant,
                                const std::string& id) const;
  // Any tenant's job (the worker that runs it).
  absl::StatusOr<JobRecord> GetAny(const std::string& id) const;
  // The newest queued, running or succeeded job of `tenant` with `digest`.
  absl::StatusOr<std::optional<JobRecord>> FindByDigest(
      const std::string& tenant, const std::string& digest) const;
  // Summaries, oldest first.
  absl::StatusOr<Page<JobRecord>> List(const std::string& tenant,
                                       std::optional<JobState> state,
                                       const PageRequest& page) const;
  absl::Status Delete(const std::string& tenant, const std::string& id);
  // Queued and running jobs of `tenant`.
  absl::StatusOr<int64_t> CountActive(const std::string& tenant) const;
  // Jobs waiting in the queue (all tenants).
  absl::StatusOr<int64_t> CountQueued() const;
  // Bytes of `tenant`'s stored results.
  absl::StatusOr<int64_t> ResultBytes(const std::string& tenant) const;
  // Jobs whose result is `dir`.
  absl::StatusOr<int64_t> CountUsing(const std::string& dir) const;
  // Finished jobs that ended before `before_ms`, (tenant, id) pairs.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> EndedBefore(
      int64_t before_ms, int64_t limit) const;

 private:
  JobStore() = default;
  std::shared_ptr<Database> db_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_JOB_STORE_H_
