// Several merges in one file (mergekit-multi): named documents are stages,
// the one unnamed document is the final merge. A model reference whose
// model part (before any `+`) is a stage's name means that stage's output
// (names win over folders). Stages run after the stages they use, whatever
// the order of the documents; each writes exactly what it would write on
// its own (its out_dtype, its config.json) into a scratch folder, which is
// removed when the final merge is done.
#ifndef MERGESERVE_ENGINE_MERGE_STAGES_H_
#define MERGESERVE_ENGINE_MERGE_STAGES_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/merge_config.h"

namespace mergeserve {

// The documents in the order they run, the final merge last; errors name a
// stage (two of one name, a cycle) or say that there is no final merge, or
// more than one.
absl::StatusOr<std::vector<MergeConfig>> OrderStages(
    std::vector<MergeConfig> documents);

// Runs ordered documents: stages into scratch folders under `scratch_dir`
// (references rewritten to them), then the final merge with `options`.
// `on_stage` hears each stage's name as it starts.
absl::StatusOr<MergeSummary> RunMergeStages(
    std::vector<MergeConfig> ordered, const MergeOptions& options,
    const std::string& scratch_dir,
    const std::function<void(const std::string&)>& on_stage = {});

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MERGE_STAGES_H_
