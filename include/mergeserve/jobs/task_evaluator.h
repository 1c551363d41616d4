// Evaluates weights on the registered tasks: for each task, the program of
// an expert of that task (its head) is loaded with that expert's weights,
// then with the weights under test, and run on the task's dataset.
#ifndef MERGESERVE_JOBS_TASK_EVALUATOR_H_
#define MERGESERVE_JOBS_TASK_EVALUATOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "nlohmann/json.hpp"

namespace mergeserve {

struct TaskMetrics {
  std::string task;
  std::string dataset;
  std::string head;  // the expert whose program ran
  int64_t examples = 0;
  double accuracy = 0;
  double mean_cross_entropy = 0;
};

struct EvalTarget {
  std::string tenant;       // whose checkpoints, tasks and datasets
  std::string weights_dir;  // folder of the weights under test
  FileCheck weights_check;  // what its files must pass
  // When the target is a registered checkpoint: it is run whole on its own
  // task, and on other tasks only its tensors shared with the head's base
  // replace the head expert's.
  std::string checkpoint;
  // Experts to take heads from first (a merge's experts), else any
  // registered expert of the task with a program.
  std::vector<std::string> preferred_heads;
  // The request's `merge_tensors` regex: only the merged tensors replace
  // the head expert's ("" = every tensor the base has).
  std::string merged_regex;
  std::vector<std::string> tasks;  // empty: preferred heads' tasks, else all
  // Dataset role to read: kValidation falls back to kEval.
  DatasetRole role = DatasetRole::kEval;
  int64_t batch_size = 256;
  int64_t max_examples = 0;
  // Checked between tasks.
  const std::atomic<bool>* cancelled = nullptr;
  // Tasks an earlier run evaluated: taken as they are, not run again.
  std::vector<TaskMetrics> done;
};

class TaskEvaluator {
 public:
  TaskEvaluator(const CheckpointRegistry* registry, std::string device)
      : registry_(registry), device_(std::move(device)) {}

  // The tasks `target` will be evaluated on, in order, with their heads.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Plan(
      const EvalTarget& target) const;
  // Lines naming everything the evaluation of `target` reads besides the
  // weights under test: each task's head (its content) and dataset (its
  // content), for content addresses.
  absl::StatusOr<std::string> DigestLines(const EvalTarget& target) const;
  // `on_task` gets each task's metrics as they come (not those in
  // target.done); an error stops the evaluation with it.
  absl::StatusOr<std::vector<TaskMetrics>> Run(
      const EvalTarget& target,
      const std::function<void(const std::string& task, int64_t done,
                               int64_t total)>& progress = {},
      const std::function<absl::Status(const TaskMetrics&)>& on_task = {})
      const;

 private:
  const CheckpointRegistry* registry_;
  std::string device_;
};

double MeanAccuracy(const std::vector<TaskMetrics>& tasks);
// TaskMetrics as JSON (job logs and results) and back.
nlohmann::json TaskMetricsToJson(const TaskMetrics& m);
absl::StatusOr<TaskMetrics> TaskMetricsFromJson(const nlohmann::json& j);
// The `merge_tensors` regex of a merge config ("" when not set).
std::string MergedTensorsRegex(const MergeConfig& config);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_TASK_EVALUATOR_H_
