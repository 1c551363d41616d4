// Helpers the whole-tensor methods share: which models take part and the
// parameters they require (LoadF64, on ATen, is in engine/aten_util.h).
#ifndef MERGESERVE_METHODS_METHOD_UTIL_H_
#define MERGESERVE_METHODS_METHOD_UTIL_H_

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
// A per-model number that has no default: an error naming the key and the
// model when neither the model nor the global parameters give it.
absl::StatusOr<double> RequiredNumber(const MergePlan& plan,
                                      const std::string& method,
                                      const std::string& key, int model,
                                      const PlannedTensor& t);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_METHOD_UTIL_H_
