// Model breadcrumbs (Davari & Belilovsky): per tensor, drop the largest γ
// fraction of |τ_i| (outliers) and the smallest 1 − d − γ, then task
// arithmetic (breadcrumbs) or TIES election (breadcrumbs_ties).
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewBreadcrumbsMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kOutliers;
  return std::make_unique<TaskVectorMerge>(kind);
}

std::unique_ptr<MergeMethod> NewBreadcrumbsTiesMethod() {
  TaskVectorKind kind;
  kind.sparsify = Sparsify::kOutliers;
  kind.consensus = Consensus::kSum;
  return std::make_unique<TaskVectorMerge>(kind);
}

}  // namespace mergeserve
