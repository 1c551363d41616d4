// DARE (Yu et al., ICML'24): drop each τ_i entry with probability 1 − d_i,
// rescale survivors, then task arithmetic (dare_linear) or TIES election
// (dare_ties). Randomness is counter-based (Philox) per element.
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewDareLinearMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kRandom;
  return std::make_unique<TaskVectorMerge>(kind);
}

std::unique_ptr<MergeMethod> NewDareTiesMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kRandom;
  kind.consensus = Consensus::kSum;
  return std::make_unique<TaskVectorMerge>(kind);
}

}  // namespace mergeserve
