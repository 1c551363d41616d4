// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-23T05:13:02.120Z","event":"job_finished","job":"job-1a2b","state":"SUCCEEDED"}
#ifndef MERGESERVE_BASE_LOG_H_
#define MERGESERVE_BASE_LOG_H_

#include <string>
#include <utility>
#include <vector>

namespace mergeserve {

using LogFields = std::vector<std::pair<std::string, std::string>>;

void LogEvent(const std::string& event, const LogFields& fields);
// The current UTC time as "2026-11-23T05:13:02.120Z".
std::string TimestampNow();
// Turns logging off (tests) or on; on by default.
void SetLogEnabled(bool enabled);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_LOG_H_
