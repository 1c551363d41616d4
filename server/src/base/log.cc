#include "mergeserve/base/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {
std::atomic<bool> g_enabled{true};
}

void SetLogEnabled(bool enabled) { g_enabled = enabled; }

std::string TimestampNow() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int ms =
      static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                           now.time_since_epoch())
                           .count() %
                       1000);
  std::tm tm;
  gmtime_r(&t, &tm);
  char ts[64];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                tm.tm_min, tm.tm_sec, ms);
  return ts;
}

void LogEvent(const std::string& event, const LogFields& fields) {
  if (!g_enabled) return;
  nlohmann::ordered_json j;
  j["ts"] = TimestampNow();
  j["event"] = event;
  for (const auto& [k, v] : fields) j[k] = v;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  // A name or message with invalid UTF-8 must not throw.
  std::fprintf(
      stderr, "%s\n",
      j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

}  // namespace mergeserve
