// The one place engine errors (absl::Status) become gRPC statuses.
#ifndef MERGESERVE_GRPC_STATUS_UTIL_H_
#define MERGESERVE_GRPC_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace mergeserve {

// Longest error message sent to a client: far below the 8 KiB a client
// accepts for trailing metadata, whatever a request echoed into it.
inline constexpr size_t kMaxErrorMessageBytes = 1024;

// Codes map one to one (absl and gRPC share the canonical code space). The
// message is capped at kMaxErrorMessageBytes, and the server's data dir is
// shown as "<data>" (clients need not know where the server keeps files).
grpc::Status ToGrpcStatus(const absl::Status& status);

// The data dir to hide in messages (set once at server start).
void SetDataDirForMessages(const std::string& data_dir);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_STATUS_UTIL_H_
