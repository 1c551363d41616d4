// task_arithmetic (Ilharco et al., ICLR'23): θ = θ0 + λ Σ w_i τ_i.
#include "methods/methods.h"
#include "methods/task_vector_merge.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewTaskArithmeticMethod() {
  return std::make_unique<TaskVectorMerge>(TaskVectorKind{});
}

}  // namespace mergeserve
