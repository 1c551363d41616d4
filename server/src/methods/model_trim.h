// trim_scope: model, the TIES paper's trim: each expert keeps the k largest
// |τ| over its whole task vector, not per tensor. One streamed selection over
// every merged tensor finds each expert's k-th magnitude
// (engine/magnitude_selector), and the set is then split per tensor. With
// mergekit's exact keep, ties at the boundary are kept first in flat order
// over the model: the tensors before the one where the kept ties run out keep
// all of theirs, those after none, and that one's merge pass counts them
// (TopSet::ties_in_pass, a TieLedger), as a per-tensor trim does.
#ifndef MERGESERVE_METHODS_MODEL_TRIM_H_
#define MERGESERVE_METHODS_MODEL_TRIM_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

// Per merged tensor name, per expert (the index into `experts`).
using ModelTrimSets = std::map<std::string, std::vector<TopSet>>;

// The keep sets of a whole-model magnitude trim of `experts` (model
// indices), each at its density (one per model: a gradient or filter list is
// INVALID_ARGUMENT). Reads and fills ctx.cache where it has one.
absl::StatusOr<ModelTrimSets> SelectModelTrim(const MergePlan& plan,
                                              ExecContext& ctx,
                                              const TaskVectorOptions& opts,
                                              double default_density,
                                              const std::vector<int>& experts);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_MODEL_TRIM_H_
