#include "mergeserve/engine/merge_method.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace mergeserve {

absl::Status NonFiniteError(const std::string& tensor,
                            const std::string& model_ref) {
  return absl::InvalidArgumentError(absl::StrCat(
      "tensor '", tensor, "' of model '", model_ref,
      "' contains NaN or Inf; refusing to merge it"));
}

bool AllFinite(const float* v, int64_t n) {
  // Exponent all ones means Inf or NaN; OR-reduce so the loop vectorises.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, v + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace mergeserve
