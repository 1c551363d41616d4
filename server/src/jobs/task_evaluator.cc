#include "mergeserve/jobs/task_evaluator.h"

#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/tensor_filter.h"
#include "mergeserve/eval/program_evaluator.h"

namespace mergeserve {
namespace {

bool Runnable(const CheckpointRecord& c, const std::string& task) {
  return c.task == task && !c.program.empty();
}

// The task's newest dataset of `role`, else its newest eval dataset.
absl::StatusOr<DatasetRecord> TaskData(const CheckpointRegistry& registry,
                                       const std::string& tenant,
                                       const std::string& task,
                                       DatasetRole role) {
  MS_ASSIGN_OR_RETURN(auto datasets, registry.ListDatasets(tenant, task, {}));
  const DatasetRecord* data = nullptr;
  for (DatasetRole r : {role, DatasetRole::kEval}) {
    for (const DatasetRecord& d : datasets.items) {
      if (d.role == r) data = &d;  // the newest
    }
    if (data != nullptr) break;
  }
  if (data == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task '", task, "' has no ", DatasetRoleName(role),
        " dataset (mergectl dataset NAME FILE --task ", task, " --role eval)"));
  }
  return *data;
}

}  // namespace

std::string MergedTensorsRegex(const MergeConfig& config) {
  auto it = config.parameters.find("merge_tensors");
  if (it == config.parameters.end()) return "";
  auto s = it->second.AsString("merge_tensors");
  return s.ok() ? *s : "";
}

nlohmann::json TaskMetricsToJson(const TaskMetrics& m) {
  return {
      {"task", m.task},         {"dataset", m.dataset},
      {"head", m.head},         {"examples", m.examples},
      {"accuracy", m.accuracy}, {"mean_cross_entropy", m.mean_cross_entropy}};
}

absl::StatusOr<TaskMetrics> TaskMetricsFromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("task")) {
    return absl::DataLossError(
        "a task's metrics in the job log are unreadable");
  }
  TaskMetrics m;
  m.task = j.value("task", "");
  m.dataset = j.value("dataset", "");
  m.head = j.value("head", "");
  m.examples = j.value("examples", int64_t{0});
  m.accuracy = j.value("accuracy", 0.0);
  m.mean_cross_entropy = j.value("mean_cross_entropy", 0.0);
  return m;
}

double MeanAccuracy(const std::vector<TaskMetrics>& tasks) {
  double sum = 0;
  for (const TaskMetrics& t : tasks) sum += t.accuracy;
  return tasks.empty() ? 0 : sum / static_cast<double>(tasks.size());
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
TaskEvaluator::Plan(const EvalTarget& target) const {
  std::vector<CheckpointRecord> preferred;
  for (const std::string& h : target.preferred_heads) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c,
                        registry_->Get(target.tenant, h, false));
    preferred.push_back(c);
  }
  std::vector<std::string> tasks = target.tasks;
  if (tasks.empty()) {
    std::set<std::string> seen;
    for (const CheckpointRecord& c : preferred) {
      if (!c.task.empty() && seen.insert(c.task).second)
        tasks.push_back(c.task);
    }
    if (tasks.empty()) {
      MS_ASSIGN_OR_RETURN(auto all, registry_->ListDatasets(
                                        target.tenant, "", DatasetRole::kEval));
      for (const DatasetRecord& d : all.items) {
        if (seen.insert(d.task).second) tasks.push_back(d.task);
      }
    }
  }
  if (tasks.empty()) {
    return absl::FailedPreconditionError(
        "nothing to evaluate on: no task has an eval dataset (mergectl "
        "dataset NAME FILE --task T --role eval)");
  }
  std::optional<CheckpointRecord> self;
  if (!target.checkpoint.empty()) {
    MS_ASSIGN_OR_RETURN(
        self, registry_->Get(target.tenant, target.checkpoint, false));
  }
  MS_ASSIGN_OR_RETURN(
      auto listed, registry_->List(target.tenant, CheckpointRole::kExpert, {}));
  const std::vector<CheckpointRecord>& experts = listed.items;
  std::vector<std::pair<std::string, std::string>> plan;
  for (const std::string& task : tasks) {
    std::string head;
    for (const CheckpointRecord& c : preferred) {
      if (head.empty() && Runnable(c, task)) head = c.name;
    }
    if (head.empty() && self && Runnable(*self, task)) head = self->name;
    for (const CheckpointRecord& c : experts) {
      if (head.empty() && Runnable(c, task)) head = c.name;
    }
    if (head.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("task '", task,
                       "' has no registered expert with a program to "
                       "evaluate with (register one with --program --task)"));
    }
    plan.push_back({task, head});
  }
  return plan;
}

absl::StatusOr<std::string> TaskEvaluator::DigestLines(
    const EvalTarget& target) const {
  MS_ASSIGN_OR_RETURN(auto plan, Plan(target));
  std::string lines = absl::StrCat("role ", DatasetRoleName(target.role),
                                   " merged ", target.merged_regex, "\n");
  for (const auto& [task, head_name] : plan) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord head,
                        registry_->Get(target.tenant, head_name, false));
    MS_ASSIGN_OR_RETURN(DatasetRecord data,
                        TaskData(*registry_, target.tenant, task, target.role));
    absl::StrAppend(&lines, "task ", task, " head ", head.name, " ",
                    head.content_digest, " program ", head.program, " data ",
                    data.name, " ", data.content_digest, "\n");
  }
  return lines;
}

absl::StatusOr<std::vector<TaskMetrics>> TaskEvaluator::Run(
    const EvalTarget& target,
    const std::function<void(const std::string&, int64_t, int64_t)>& progress,
    const std::function<absl::Status(const TaskMetrics&)>& on_task) const {
  MS_ASSIGN_OR_RETURN(auto plan, Plan(target));
  MS_ASSIGN_OR_RETURN(auto weights, ModelFolder::Open(target.weights_dir,
                                                      target.weights_check));
  std::vector<TaskMetrics> out;
  for (const auto& [task, head_name] : plan) {
    const TaskMetrics* earlier = nullptr;
    for (const TaskMetrics& m : target.done) {
      if (m.task == task && m.head == head_name) earlier = &m;
    }
    if (earlier != nullptr) {
      out.push_back(*earlier);
      continue;
    }
    if (target.cancelled != nullptr && target.cancelled->load()) {
      return absl::CancelledError("evaluation cancelled");
    }
    MS_ASSIGN_OR_RETURN(DatasetRecord dataset,
                        TaskData(*registry_, target.tenant, task, target.role));
    const DatasetRecord* data = &dataset;
    MS_ASSIGN_OR_RETURN(CheckpointRecord head,
                        registry_->Get(target.tenant, head_name, false));
    MS_ASSIGN_OR_RETURN(auto ev,
                        ProgramEvaluator::Create(head.program, device_));
    MS_ASSIGN_OR_RETURN(
        auto head_weights,
        ModelFolder::Open(head.path, registry_->FileCheckFor(head)));
    MS_RETURN_IF_ERROR(ev->LoadWeights(*head_weights).status());
    if (head.name != target.checkpoint) {
      // Only the shared (merged) part replaces the head expert's weights.
      std::set<std::string> shared;
      if (!head.base.empty()) {
        MS_ASSIGN_OR_RETURN(CheckpointRecord base,
                            registry_->Get(target.tenant, head.base, true));
        for (const TensorMeta& t : base.tensors) shared.insert(t.name);
      }
      // With merge_tensors, the rest of the result is a copy of the base:
      // the head expert keeps its own.
      std::optional<TensorFilter> merged;
      if (!target.merged_regex.empty()) {
        MS_ASSIGN_OR_RETURN(merged, TensorFilter::Compile(target.merged_regex));
      }
      MS_ASSIGN_OR_RETURN(auto loaded,
                          ev->LoadWeights(*weights, [&](const std::string& n) {
                            return (shared.empty() || shared.count(n) > 0) &&
                                   (!merged || merged->Matches(n));
                          }));
      if (loaded.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "no tensor of the weights under test is a parameter of the "
            "program of '",
            head.name, "'"));
      }
    }
    MS_ASSIGN_OR_RETURN(EvalResult r,
                        ev->Evaluate(
                            data->path, target.batch_size,
                            [&, task = task](int64_t done, int64_t total) {
                              if (progress) progress(task, done, total);
                            },
                            target.max_examples));
    TaskMetrics m{task,       data->name, head.name,
                  r.examples, r.accuracy, r.mean_cross_entropy};
    if (on_task) MS_RETURN_IF_ERROR(on_task(m));
    out.push_back(m);
  }
  return out;
}

}  // namespace mergeserve
