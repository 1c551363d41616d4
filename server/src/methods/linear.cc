// linear: θ = Σ w_i θ_i / Σ w_i ("model soup"); normalize: false drops the
// division. The base takes part only if listed as a model.
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewLinearMethod() {
  TaskVectorKind kind;
  kind.default_normalize = true;
  kind.use_base = false;
  return std::make_unique<TaskVectorMerge>(kind);
}

}  // namespace mergeserve
