// Small helpers for error statuses: errno to a canonical code, and bounded
// quoting of untrusted text inside messages.
#ifndef MERGESERVE_BASE_ERRORS_H_
#define MERGESERVE_BASE_ERRORS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mergeserve {

// `what: strerror(err)` with the code a caller can act on: a full disk or
// quota (ENOSPC, EDQUOT, EFBIG) is RESOURCE_EXHAUSTED, a missing file
// NOT_FOUND, a refused one PERMISSION_DENIED, anything else INTERNAL.
absl::Status ErrnoStatus(int err, absl::string_view what);

// `text` for an error message: at most `max` bytes (cut at a UTF-8
// boundary, with how long it was), so a 10 KB name never bloats a status
// past a client's metadata limit.
std::string Abbreviate(absl::string_view text, size_t max = 64);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_ERRORS_H_
