// Merge methods by name.
#ifndef MERGESERVE_ENGINE_METHOD_REGISTRY_H_
#define MERGESERVE_ENGINE_METHOD_REGISTRY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_method.h"

namespace mergeserve {

struct MethodInfo {
  const char* name;
  const char* summary;
  std::unique_ptr<MergeMethod> (*create)();
  // Streams fixed chunks on the fused backend (else holds whole tensors).
  bool streams = false;
  // Ranks task-vector magnitudes (MagnitudeSelector) before merging.
  bool selects = false;
  // Streams whole rows per chunk (a statistic per row, DELLA's ranks).
  bool row_chunks = false;
};
// nullptr if unknown.
const MethodInfo* FindMethod(const std::string& name);

const std::vector<MethodInfo>& AllMethods();
absl::StatusOr<std::unique_ptr<MergeMethod>> CreateMethod(
    const std::string& name);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_METHOD_REGISTRY_H_
