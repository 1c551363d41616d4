// How much memory this process may use: the cgroup's limit (a Kubernetes
// container's memory limit) or, without one, the machine's RAM.
#ifndef MERGESERVE_BASE_SYSTEM_MEMORY_H_
#define MERGESERVE_BASE_SYSTEM_MEMORY_H_

#include <cstdint>

namespace mergeserve {

// Bytes; 0 when neither can be read.
int64_t UsableMemoryBytes();

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_SYSTEM_MEMORY_H_
