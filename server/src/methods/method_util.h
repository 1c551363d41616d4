// Helpers the whole-tensor (ATen) methods share: which models take part
// and their tensors as float64.
#ifndef MERGESERVE_METHODS_METHOD_UTIL_H_
#define MERGESERVE_METHODS_METHOD_UTIL_H_

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_method.h"

namespace mergeserve {

// Indices of the plan's models that are not the base, in config order.
std::vector<int> NonBaseModels(const MergePlan& plan);
// The one model besides the base of a method that needs both (nearswap,
// arcee_fusion); errors name the method.
absl::StatusOr<int> BaseAndOneModel(const MergePlan& plan,
                                    const std::string& method);
// Model `model`'s tensor (-1: the base's), flattened to the tensor's shape,
// as float64 on the backend's device; NaN/Inf are an error naming it.
absl::StatusOr<at::Tensor> LoadF64(const MergePlan& plan,
                                   const PlannedTensor& t, int model,
                                   const ExecContext& ctx);
// A per-model number that has no default: an error naming the key and the
// model when neither the model nor the global parameters give it.
absl::StatusOr<double> RequiredNumber(const MergePlan& plan,
                                      const std::string& method,
                                      const std::string& key, int model,
                                      const PlannedTensor& t);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_METHOD_UTIL_H_
