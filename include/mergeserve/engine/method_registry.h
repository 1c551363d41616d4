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
  // Bytes a whole-tensor method holds per element of the tensor it merges
  // when that is more than every model's fp32 copy (0): the matrix methods'
  // fp64 task vector, sum, SVD factors, stacked and polar factors.
  int64_t held_bytes_per_element = 0;
};
// What a whole-tensor merge of a `numel`-element tensor over `models`
// models holds at most (the executor's budget check and estimate).
int64_t WholeTensorBytes(const MethodInfo* info, int64_t models, int64_t numel);
// nullptr if unknown.
const MethodInfo* FindMethod(const std::string& name);

const std::vector<MethodInfo>& AllMethods();
absl::StatusOr<std::unique_ptr<MergeMethod>> CreateMethod(
    const std::string& name);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_METHOD_REGISTRY_H_
