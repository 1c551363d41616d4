#include "mergeserve/engine/tensor_filter.h"

#include <re2/re2.h>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {

absl::StatusOr<TensorFilter> TensorFilter::Compile(const std::string& pattern) {
  if (pattern.size() > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: merge_tensors is ", pattern.size(),
                     " characters; at most 1024 are allowed"));
  }
  RE2::Options options;
  options.set_log_errors(false);
  auto re = std::make_shared<const re2::RE2>(pattern, options);
  if (!re->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: merge_tensors '", Abbreviate(pattern, 128),
                     "' is not a regular expression: ", re->error()));
  }
  TensorFilter f;
  f.re_ = std::move(re);
  return f;
}

bool TensorFilter::Matches(const std::string& name) const {
  return RE2::PartialMatch(name, *re_);
}

}  // namespace mergeserve
