// DELLA (Deep et al.): per row, keep probability rises linearly with the
// magnitude rank over [d − ε, d + ε]; survivors rescaled by 1/p; then TIES
// election (della, normalized by default) or task arithmetic (della_linear).
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewDellaMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kRankSampling;
  kind.consensus = Consensus::kSum;
  kind.default_normalize = true;
  return std::make_unique<TaskVectorMerge>(kind);
}

std::unique_ptr<MergeMethod> NewDellaLinearMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kRankSampling;
  return std::make_unique<TaskVectorMerge>(kind);
}

}  // namespace mergeserve
