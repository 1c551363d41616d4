// Wall-clock time as stored in records (milliseconds since the Unix epoch),
// as shown (UTC, ISO 8601) and as typed on command lines ("30d").
#ifndef MERGESERVE_BASE_CLOCK_H_
#define MERGESERVE_BASE_CLOCK_H_

#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "2026-11-29T17:16:49Z"; "-" for 0 (never).
std::string FormatUtcTime(int64_t ms);

// The longest duration a token's expiry or a job's retention may take: 100
// years. Added to a time in ms, it cannot overflow an int64_t.
inline constexpr int64_t kMaxDurationMs = int64_t{36500} * 86400 * 1000;

// "30d", "12h", "90m", "45s" or a plain number of seconds, in ms; at most
// kMaxDurationMs (36500d).
absl::StatusOr<int64_t> ParseDurationMs(const std::string& text);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_CLOCK_H_
