#include "mergeserve/base/exit_codes.h"

namespace mergeserve {

int ExitCodeFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 2;
    case absl::StatusCode::kNotFound:
      return 3;
    case absl::StatusCode::kDataLoss:
      return 4;
    case absl::StatusCode::kAlreadyExists:
      return 5;
    case absl::StatusCode::kPermissionDenied:
      return 6;
    case absl::StatusCode::kFailedPrecondition:
      return 7;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return 8;
    case absl::StatusCode::kResourceExhausted:
      return 9;
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
      return 10;
    case absl::StatusCode::kUnauthenticated:
      return 11;
    default:
      return 1;
  }
}

const char* ExitCodeHelp() {
  return "Exit codes: 0 ok, 2 invalid argument, 3 not found, 4 data loss or a "
         "failed\nchecksum, 5 already exists, 6 permission denied, 7 failed "
         "precondition,\n8 server unavailable or deadline exceeded, 9 queue "
         "full / over budget or\nquota, 10 cancelled, 11 unauthenticated "
         "(missing, bad, expired or\nrevoked token), 1 other.\n";
}

}  // namespace mergeserve
