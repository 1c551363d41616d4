#include "mergeserve/base/clock.h"

#include <cctype>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {

std::string FormatUtcTime(int64_t ms) {
  if (ms == 0) return "-";
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

absl::StatusOr<int64_t> ParseDurationMs(const std::string& text) {
  if (text.empty()) return absl::InvalidArgumentError("empty duration");
  size_t digits = 0;
  while (digits < text.size() &&
         std::isdigit(static_cast<unsigned char>(text[digits]))) {
    ++digits;
  }
  const std::string unit = text.substr(digits);
  if (digits == 0 || digits > 12 ||
      !(unit.empty() || unit == "s" || unit == "m" || unit == "h" ||
        unit == "d")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "duration '", Abbreviate(text),
        "' must be a number with an optional unit s, m, h or d (e.g. 30d)"));
  }
  const int64_t n = std::stoll(text.substr(0, digits));
  const int64_t scale = unit == "m"   ? 60
                        : unit == "h" ? 3600
                        : unit == "d" ? 86400
                                      : 1;
  // Twelve digits of days would overflow the product.
  if (n > kMaxDurationMs / 1000 / scale) {
    return absl::InvalidArgumentError(absl::StrCat(
        "duration '", Abbreviate(text), "' is longer than 36500d (100 years)"));
  }
  return n * scale * 1000;
}

}  // namespace mergeserve
