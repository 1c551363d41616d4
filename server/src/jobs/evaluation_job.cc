#include "mergeserve/jobs/evaluation_job.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/registry/storage_roots.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

using Json = nlohmann::json;

// What the evaluation reads: its target, the checkpoints whose size bounds
// its memory, and a line naming the weights' content.
struct Resolved {
  EvalTarget target;
  std::vector<std::string> memory_of;
  std::string weights_line;
};

absl::StatusOr<Resolved> Resolve(JobManager& jobs, const std::string& tenant,
                                 const EvalParams& p) {
  Resolved out;
  EvalTarget& t = out.target;
  t.tenant = tenant;
  t.tasks = p.tasks;
  t.batch_size = p.batch_size;
  t.max_examples = p.max_examples;
  if (!p.checkpoint.empty()) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c,
                        jobs.registry()->Get(tenant, p.checkpoint, false));
    t.checkpoint = c.name;
    t.weights_dir = c.path;
    t.weights_check = jobs.registry()->FileCheckFor(c);
    out.memory_of = {c.name};
    out.weights_line =
        absl::StrCat("checkpoint ", c.name, " ", c.content_digest);
    return out;
  }
  if (p.job_id.empty()) {
    return absl::InvalidArgumentError(
        "evaluate needs a job_id or a checkpoint");
  }
  MS_ASSIGN_OR_RETURN(JobRecord r, jobs.Get(tenant, p.job_id));
  if (r.kind != kMergeJob || r.state != JobState::kSucceeded) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", Abbreviate(p.job_id), "' has no result to evaluate: ",
        r.kind != kMergeJob
            ? absl::StrCat("it is a ", r.kind, " job, not a merge")
        : r.error_message.empty() ? std::string("it did not succeed")
                                  : r.error_message));
  }
  if (r.config_yaml.empty()) {
    // List summaries leave the request out; this one is whole.
    return absl::InternalError("the merge job's request is missing");
  }
  MS_ASSIGN_OR_RETURN(MergeConfig config,
                      MergeConfig::FromYaml(r.config_yaml, ""));
  t.preferred_heads = ExpertsOf(config);
  t.weights_dir = r.result_dir;
  t.weights_check = StorageRoots::OwnedFileCheck(r.result_dir);
  t.merged_regex = MergedTensorsRegex(config);
  out.memory_of = t.preferred_heads;
  // A result folder is named by its content address.
  out.weights_line = absl::StrCat("result ", r.request_digest);
  return out;
}

PlannedWorkJob Planned(JobManager& jobs, EvalTarget target, int64_t memory) {
  PlannedWorkJob w;
  w.memory = memory;
  w.run = [&jobs, target = std::move(target)](
              JobContext& ctx) -> absl::StatusOr<std::string> {
    const auto start = std::chrono::steady_clock::now();
    EvalTarget t = target;
    t.cancelled = ctx.cancelled;
    for (const JobLogEntry& e : ctx.earlier) {
      Json j = Json::parse(e.payload, nullptr, false);
      MS_ASSIGN_OR_RETURN(TaskMetrics m, TaskMetricsFromJson(j));
      t.done.push_back(std::move(m));
    }
    TaskEvaluator evaluator(jobs.registry(), jobs.options().device);
    MS_ASSIGN_OR_RETURN(
        std::vector<TaskMetrics> tasks,
        evaluator.Run(
            t,
            [&ctx](const std::string& task, int64_t done, int64_t total) {
              ctx.progress(task, done, total);
            },
            [&ctx](const TaskMetrics& m) {
              return ctx.log(TaskMetricsToJson(m).dump());
            }));
    EvalSummary s;
    s.tasks = std::move(tasks);
    s.mean_accuracy = MeanAccuracy(s.tasks);
    s.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return EvalSummaryToJson(s);
  };
  return w;
}

absl::StatusOr<PlannedWorkJob> Plan(JobManager& jobs, const std::string& tenant,
                                    const EvalParams& params,
                                    std::string* digest) {
  MS_ASSIGN_OR_RETURN(Resolved r, Resolve(jobs, tenant, params));
  MS_ASSIGN_OR_RETURN(
      int64_t memory,
      EstimateEvaluationMemory(*jobs.registry(), tenant, r.memory_of));
  TaskEvaluator evaluator(jobs.registry(), jobs.options().device);
  // Also checks that every task has a head and data before it is queued.
  MS_ASSIGN_OR_RETURN(std::string lines, evaluator.DigestLines(r.target));
  if (digest != nullptr) {
    *digest = "evaluate-" + Sha256Hex(absl::StrCat(
                                "tenant ", tenant, "\n", r.weights_line, "\n",
                                EvalParamsToJson(params), "\n", lines));
  }
  return Planned(jobs, std::move(r.target), memory);
}

}  // namespace

absl::StatusOr<JobRecord> SubmitEvaluation(JobManager& jobs,
                                           const std::string& tenant,
                                           const EvalParams& params) {
  EvalParams p = params;
  p.batch_size =
      std::clamp<int64_t>(p.batch_size > 0 ? p.batch_size : 256, 1, 4096);
  p.max_examples = std::max<int64_t>(0, p.max_examples);
  WorkJobRequest r;
  r.kind = kEvaluateJob;
  r.tenant = tenant;
  MS_ASSIGN_OR_RETURN(r.planned, Plan(jobs, tenant, p, &r.digest));
  r.params = EvalParamsToJson(p);
  return jobs.SubmitWorkJob(std::move(r));
}

absl::StatusOr<PlannedWorkJob> PlanEvaluationJob(JobManager& jobs,
                                                 const JobRecord& job) {
  MS_ASSIGN_OR_RETURN(EvalParams p, EvalParamsFromJson(job.params));
  return Plan(jobs, job.tenant, p, nullptr);
}

std::string EvalParamsToJson(const EvalParams& p) {
  return Json{{"job_id", p.job_id},
              {"checkpoint", p.checkpoint},
              {"tasks", p.tasks},
              {"batch_size", p.batch_size},
              {"max_examples", p.max_examples}}
      .dump();
}

absl::StatusOr<EvalParams> EvalParamsFromJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, false);
  EvalParams p;
  try {
    p.job_id = j.at("job_id").get<std::string>();
    p.checkpoint = j.at("checkpoint").get<std::string>();
    p.tasks = j.at("tasks").get<std::vector<std::string>>();
    p.batch_size = j.at("batch_size").get<int64_t>();
    p.max_examples = j.at("max_examples").get<int64_t>();
  } catch (const Json::exception&) {
    return absl::DataLossError(
        "the stored parameters of an evaluation job are unreadable");
  }
  return p;
}

std::string EvalSummaryToJson(const EvalSummary& s) {
  Json tasks = Json::array();
  for (const TaskMetrics& m : s.tasks) tasks.push_back(TaskMetricsToJson(m));
  return Json{{"tasks", tasks},
              {"mean_accuracy", s.mean_accuracy},
              {"seconds", s.seconds}}
      .dump();
}

absl::StatusOr<EvalSummary> EvalSummaryFromJson(const std::string& text) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(
        "the stored summary of an evaluation job is unreadable");
  }
  EvalSummary s;
  for (const Json& t : j.value("tasks", Json::array())) {
    MS_ASSIGN_OR_RETURN(TaskMetrics m, TaskMetricsFromJson(t));
    s.tasks.push_back(std::move(m));
  }
  s.mean_accuracy = j.value("mean_accuracy", 0.0);
  s.seconds = j.value("seconds", 0.0);
  return s;
}

}  // namespace mergeserve
