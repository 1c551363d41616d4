// Merge jobs in the server's database: one row per job, per tenant, with
// the request (canonical YAML), its content address, progress, outcome and
// result files. Lists are paged and return summaries (no request text), so
// no job, however large its request, can break listing for anyone.
#ifndef MERGESERVE_JOBS_JOB_STORE_H_
#define MERGESERVE_JOBS_JOB_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/store/page_token.h"
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
};

class JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      std::shared_ptr<SqliteDatabase> db);

  absl::Status Put(const JobRecord& r);
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
  // Bytes of `tenant`'s stored results.
  absl::StatusOr<int64_t> ResultBytes(const std::string& tenant) const;
  // Jobs whose result is `dir`.
  absl::StatusOr<int64_t> CountUsing(const std::string& dir) const;
  // Finished jobs that ended before `before_ms`, (tenant, id) pairs.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> EndedBefore(
      int64_t before_ms, int64_t limit) const;
  // After a restart: running jobs fail (no result), queued ids in order.
  absl::StatusOr<std::vector<std::string>> RecoverAfterRestart();

 private:
  JobStore() = default;
  std::shared_ptr<SqliteDatabase> db_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_JOB_STORE_H_
