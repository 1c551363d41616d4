#include "mergeserve/base/byte_size.h"

#include <cmath>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mergeserve {

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  size_t pos = 0;
  while (pos < s.size() &&
         (absl::ascii_isdigit(static_cast<unsigned char>(s[pos])) ||
          s[pos] == '.')) {
    ++pos;
  }
  double value;
  if (pos == 0 || !absl::SimpleAtod(s.substr(0, pos), &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid size '", text, "': expected e.g. 512MiB or 2GB"));
  }
  std::string unit(absl::StripAsciiWhitespace(s.substr(pos)));
  double mult;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kb") {
    mult = 1e3;
  } else if (unit == "m" || unit == "mb") {
    mult = 1e6;
  } else if (unit == "g" || unit == "gb") {
    mult = 1e9;
  } else if (unit == "t" || unit == "tb") {
    mult = 1e12;
  } else if (unit == "kib") {
    mult = 1024.0;
  } else if (unit == "mib") {
    mult = 1024.0 * 1024;
  } else if (unit == "gib") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "tib") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid size unit '", unit, "' in '", text, "'"));
  }
  const double bytes = value * mult;
  if (!(bytes >= 0) || bytes > 9.0e18) {
    return absl::InvalidArgumentError(
        absl::StrCat("size out of range: ", text));
  }
  return static_cast<int64_t>(std::llround(bytes));
}

std::string FormatBytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  if (u == 0) return absl::StrCat(bytes, " B");
  return absl::StrFormat("%.1f %s", v, units[u]);
}

}  // namespace mergeserve
