// The `merge_tensors` regex: which tensors a merge merges. Matched with RE2,
// in time linear in the name whatever the pattern (std::regex backtracks
// exponentially on patterns like (a|a)*b, and recurses per character), so a
// request cannot buy unbounded CPU with a pattern. RE2 syntax: no
// backreferences or lookaround.
#ifndef MERGESERVE_ENGINE_TENSOR_FILTER_H_
#define MERGESERVE_ENGINE_TENSOR_FILTER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace re2 {
class RE2;
}

namespace mergeserve {

class TensorFilter {
 public:
  // INVALID_ARGUMENT naming the pattern when it does not compile or is
  // longer than 1024 characters.
  static absl::StatusOr<TensorFilter> Compile(const std::string& pattern);
  // Whether the pattern occurs in `name` (a search, not a full match).
  bool Matches(const std::string& name) const;

 private:
  std::shared_ptr<const re2::RE2> re_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_TENSOR_FILTER_H_
