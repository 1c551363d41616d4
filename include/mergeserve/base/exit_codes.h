// Process exit codes for failures, by status code: the one table both
// binaries (mergeserve, mergectl) use, so scripts can tell failure kinds
// apart the same way whichever binary they call.
#ifndef MERGESERVE_BASE_EXIT_CODES_H_
#define MERGESERVE_BASE_EXIT_CODES_H_

#include "absl/status/status.h"

namespace mergeserve {

// 0 ok, 2 invalid argument or out of range, 3 not found, 4 data loss,
// 5 already exists, 6 permission denied, 7 failed precondition, 8
// unavailable or deadline exceeded, 9 resource exhausted, 10 cancelled or
// aborted, 11 unauthenticated, 1 anything else.
int ExitCodeFor(absl::StatusCode code);
inline int ExitCodeFor(int canonical_code) {
  return ExitCodeFor(static_cast<absl::StatusCode>(canonical_code));
}

// The table above as text for --help.
const char* ExitCodeHelp();

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_EXIT_CODES_H_
