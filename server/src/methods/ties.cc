// ties (Yadav et al., NeurIPS'23): trim each τ_i to its largest magnitudes,
// elect a sign per entry, average the agreeing entries. The `semantics`
// presets (mergekit, paper, peft) and switches live in task_vector_merge.cc.
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewTiesMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kMagnitude;
  kind.consensus = Consensus::kSum;
  kind.default_normalize = true;
  return std::make_unique<TaskVectorMerge>(kind);
}

}  // namespace mergeserve
