#include "mergeserve/store/page_token.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace mergeserve {

std::string EncodePageToken(const std::vector<std::string>& key) {
  return absl::WebSafeBase64Escape("v1\n" + absl::StrJoin(key, "\n"));
}

absl::StatusOr<std::vector<std::string>> DecodePageToken(
    const std::string& token, size_t fields) {
  std::string raw;
  if (token.size() > 4096 || !absl::WebSafeBase64Unescape(token, &raw) ||
      raw.rfind("v1\n", 0) != 0) {
    return absl::InvalidArgumentError("invalid page_token");
  }
  std::vector<std::string> key = absl::StrSplit(raw.substr(3), '\n');
  if (key.size() != fields) {
    return absl::InvalidArgumentError("invalid page_token");
  }
  return key;
}

int64_t ClampPageSize(int64_t requested, int64_t fallback, int64_t max) {
  if (requested <= 0) return fallback;
  return std::min(requested, max);
}

}  // namespace mergeserve
