// An evaluation as a job (kind "evaluate"): of a registered checkpoint or
// of a succeeded merge job's result, on its tasks' eval data. Validated and
// content-addressed at submission (the weights, each task's head and data),
// run by whichever replica claims it; each task's metrics go to the job's
// log (followed by streams on any replica, and kept by a later attempt),
// the summary is the job's result.
#ifndef MERGESERVE_JOBS_EVALUATION_JOB_H_
#define MERGESERVE_JOBS_EVALUATION_JOB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/jobs/task_evaluator.h"

namespace mergeserve {

struct EvalParams {
  // One of: a merge job of the tenant that succeeded, or a checkpoint.
  std::string job_id;
  std::string checkpoint;
  std::vector<std::string> tasks;  // empty: the target's tasks
  int64_t batch_size = 256;
  int64_t max_examples = 0;  // per task; 0: all
};

struct EvalSummary {
  std::vector<TaskMetrics> tasks;
  double mean_accuracy = 0;
  double seconds = 0;
};

// Validates and queues the evaluation, or returns the tenant's job that
// evaluates the same weights on the same heads and data.
absl::StatusOr<JobRecord> SubmitEvaluation(JobManager& jobs,
                                           const std::string& tenant,
                                           const EvalParams& params);
// Plans a claimed evaluation job from its stored request.
absl::StatusOr<PlannedWorkJob> PlanEvaluationJob(JobManager& jobs,
                                                 const JobRecord& job);

std::string EvalParamsToJson(const EvalParams& p);
absl::StatusOr<EvalParams> EvalParamsFromJson(const std::string& text);
std::string EvalSummaryToJson(const EvalSummary& s);
absl::StatusOr<EvalSummary> EvalSummaryFromJson(const std::string& text);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_EVALUATION_JOB_H_
