// Several merges in one file (mergekit-multi): named documents are stages,
// the one unnamed document is the final merge. A model reference whose
// model part (before any `+`) is a stage's name means that stage's output
// (names win over folders and registered checkpoints). Stages run after
// the stages they use, whatever the order of the documents; each writes
// exactly what it would write on its own (its out_dtype, its config.json)
// into a scratch folder, which is removed when the final merge is done.
//
// Every stage is checked before any runs: a stage that reads another is
// planned on a sketch of that stage's output (its files, tensor names,
// shapes and dtypes without data), so a wrong shape in the last merge of a
// file fails before the first one costs anything, and the memory a run
// needs is known up front.
#ifndef MERGESERVE_ENGINE_MERGE_STAGES_H_
#define MERGESERVE_ENGINE_MERGE_STAGES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/engine/merge_plan.h"

namespace mergeserve {

// A request of one or more merges, in the order they run.
struct StagedMerge {
  std::vector<MergeConfig> stages;  // named; each after those it uses
  MergeConfig final;                // written to the output
  // Every document in run order, `---` between: the canonical request.
  std::string ToYaml() const;
  // Whether `ref`'s model part names a stage.
  bool IsStage(const std::string& ref) const;
};

// The documents in the order they run; errors name a stage (two of one
// name, a cycle) or say that there is no final merge, or more than one.
// Stages no merge uses are dropped.
absl::StatusOr<StagedMerge> OrderStages(std::vector<MergeConfig> documents);

// Parses a file of one merge or several. A single unnamed document keeps
// the text as its source_text.
absl::StatusOr<StagedMerge> ParseStagedMerge(
    const std::string& text, const std::string& source_dir,
    const ConfigLimits& limits = ConfigLimits());

// Where stage outputs go and how everything else is found.
struct StageSetup {
  // References that are not stages (paths, registered checkpoints).
  ModelResolver resolver;
  // Stage outputs and sketches are written under this folder, which is
  // the stages' alone: created on demand, removed when done.
  std::string scratch_dir;
  // The check files read from a stage's folder must pass (the service's
  // owned-file check), or null.
  std::function<FileCheck(const std::string& dir)> check_for;
};

struct StagesCheck {
  int64_t memory = 0;         // the largest stage's EstimateMergeMemory
  int64_t output_bytes = 0;   // the final merge's tensor bytes
  int64_t scratch_bytes = 0;  // the stages' tensor bytes, held while running
  int64_t tensors_total = 0;  // tensors of every merge together
  // The final merge's plan when it reads no stage (then it is the plan to
  // run), else null.
  std::unique_ptr<MergePlan> final_plan;
};

// Plans every merge, each stage that reads another on sketches of it.
// Nothing but sketches (removed before returning) is written.
absl::StatusOr<StagesCheck> CheckStages(const StagedMerge& merge,
                                        const StageSetup& setup,
                                        Backend backend, int threads);

// Runs the stages into scratch folders, then the final merge with
// `options` (its resolver is replaced by one that knows the stages, its
// digest returns "" for them). `options.on_progress` hears each stage's
// tensors with `stage` set; `on_stage` hears each stage's name as it
// starts.
absl::StatusOr<MergeSummary> RunMergeStages(
    const StagedMerge& merge, const MergeOptions& options,
    const StageSetup& setup,
    const std::function<void(const std::string&)>& on_stage = {});

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MERGE_STAGES_H_
