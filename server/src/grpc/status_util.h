// The one place engine errors (absl::Status) become gRPC statuses.
#ifndef MERGESERVE_GRPC_STATUS_UTIL_H_
#define MERGESERVE_GRPC_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mergeserve {

// Codes map one to one (absl and gRPC share the canonical code space).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_STATUS_UTIL_H_
