// Sweeps and evaluations as jobs: what the queue keeps of one (enough to
// plan and run it again on any replica), and what its run gets from the
// replica that holds it. The run logs its partial results (a sweep's
// points, an evaluation's tasks) to the job's event log, which streams on
// every replica replay and follow, and from which a later attempt resumes.
#ifndef MERGESERVE_JOBS_WORK_JOB_H_
#define MERGESERVE_JOBS_WORK_JOB_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/jobs/job_store.h"

namespace mergeserve {

inline constexpr char kSweepJob[] = "sweep";
inline constexpr char kEvaluateJob[] = "evaluate";

// What a running sweep or evaluation gets.
struct JobContext {
  JobRecord job;  // as claimed: id, tenant, config_yaml, params, attempt
  const std::atomic<bool>* cancelled = nullptr;
  // Events earlier attempts logged: their work need not be done again.
  std::vector<JobLogEntry> earlier;
  // Appends to the job's log (fenced: ABORTED once another replica holds
  // the job; the run should then stop).
  std::function<absl::Status(const std::string& payload)> log;
  std::function<void(const std::string& phase, int64_t done, int64_t total)>
      progress;
};

// A sweep or evaluation ready to run: the memory it reserves on the
// executor, and the run, which returns the job's result (JSON).
struct PlannedWorkJob {
  int64_t memory = 0;
  std::function<absl::StatusOr<std::string>(JobContext&)> run;
};

// A validated sweep or evaluation to queue.
struct WorkJobRequest {
  std::string kind;  // kSweepJob, kEvaluateJob
  std::string tenant;
  std::string method;       // for summaries
  std::string config_yaml;  // a sweep's merge config, canonical
  std::string params;       // the rest of the request (JSON)
  // Content address: the tenant's same request gives the same job.
  std::string digest;
  PlannedWorkJob planned;  // used by the first attempt if claimed here
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_WORK_JOB_H_
