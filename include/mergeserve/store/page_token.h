// Opaque page tokens for keyset pagination: the sort key of the last item
// of a page, web-safe base64 encoded, so the next page starts right after
// it however many items were added or removed in between.
#ifndef MERGESERVE_STORE_PAGE_TOKEN_H_
#define MERGESERVE_STORE_PAGE_TOKEN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

// One page of a list: at most `size` items after `token` (from the previous
// page's next_token; "" = the first page). size 0: everything.
struct PageRequest {
  int64_t size = 0;
  std::string token;
};
template <typename T>
struct Page {
  std::vector<T> items;
  std::string next_token;  // "" on the last page
};

std::string EncodePageToken(const std::vector<std::string>& key);
// INVALID_ARGUMENT for a token this server did not make (or of another
// list: `fields` must match).
absl::StatusOr<std::vector<std::string>> DecodePageToken(
    const std::string& token, size_t fields);

// The page size to use: `requested` (0: `fallback`), at most `max`.
int64_t ClampPageSize(int64_t requested, int64_t fallback, int64_t max);

}  // namespace mergeserve

#endif  // MERGESERVE_STORE_PAGE_TOKEN_H_
