// A sweep as a job (kind "sweep"): validated and content-addressed at
// submission, stored with its grid, run by whichever replica claims it.
// Each finished point goes to the job's log (streams on any replica replay
// and follow it; a later attempt after a lost replica resumes after the
// last logged point); the summary is the job's result.
#ifndef MERGESERVE_JOBS_SWEEP_JOB_H_
#define MERGESERVE_JOBS_SWEEP_JOB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/jobs/sweep_runner.h"

namespace mergeserve {

struct SweepParams {
  SweepGrid grid;
  std::vector<std::string> tasks;  // empty: the experts' tasks
  int64_t max_examples = 0;        // per task; 0: all
};

// Validates the request and grid and queues the sweep, or returns the
// tenant's job for the same request and inputs.
absl::StatusOr<JobRecord> SubmitSweep(JobManager& jobs, MergeRequest request,
                                      const SweepParams& params);
// Plans a claimed sweep job from its stored request.
absl::StatusOr<PlannedWorkJob> PlanSweepJob(JobManager& jobs,
                                            const JobRecord& job);

// The job's parameters, log entries and result, as stored.
std::string SweepParamsToJson(const SweepParams& p);
absl::StatusOr<SweepParams> SweepParamsFromJson(const std::string& text);
std::string SweepPointToJson(const SweepPoint& p);
absl::StatusOr<SweepPoint> SweepPointFromJson(const std::string& text);
std::string SweepSummaryToJson(const SweepSummary& s);
absl::StatusOr<SweepSummary> SweepSummaryFromJson(const std::string& text);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_SWEEP_JOB_H_
