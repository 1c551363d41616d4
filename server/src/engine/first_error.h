// The first error of work spread over pool threads (later ones are
// dropped: one error names what failed).
#ifndef MERGESERVE_ENGINE_FIRST_ERROR_H_
#define MERGESERVE_ENGINE_FIRST_ERROR_H_

#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"

namespace mergeserve {

class FirstError {
 public:
  void Set(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) status_ = std::move(s);
  }
  bool failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return !status_.ok();
  }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }

 private:
  std::mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_FIRST_ERROR_H_
