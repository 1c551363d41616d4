// Wall-clock time as stored in records: milliseconds since the Unix epoch.
#ifndef MERGESERVE_BASE_CLOCK_H_
#define MERGESERVE_BASE_CLOCK_H_

#include <chrono>
#include <cstdint>

namespace mergeserve {

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_CLOCK_H_
