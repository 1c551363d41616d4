// Random bytes from the operating system's CSPRNG (OpenSSL RAND_bytes), for
// secrets such as API tokens.
#ifndef MERGESERVE_BASE_SECURE_RANDOM_H_
#define MERGESERVE_BASE_SECURE_RANDOM_H_

#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

// `bytes` random bytes, lower-case hex encoded (2 * bytes characters).
absl::StatusOr<std::string> SecureRandomHex(size_t bytes);

// Compares in time independent of where the strings differ.
bool ConstantTimeEquals(const std::string& a, const std::string& b);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_SECURE_RANDOM_H_
