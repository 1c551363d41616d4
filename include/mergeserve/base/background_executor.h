// A fixed set of threads working through a bounded queue of tasks: for
// slow work started by an RPC (validating and hashing a registration) that
// must not run on gRPC's callback threads nor on an unbounded number of
// detached threads. The destructor runs what was accepted, then joins.
#ifndef MERGESERVE_BASE_BACKGROUND_EXECUTOR_H_
#define MERGESERVE_BASE_BACKGROUND_EXECUTOR_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace mergeserve {

class BackgroundExecutor {
 public:
  BackgroundExecutor(int threads, size_t queue_limit);
  ~BackgroundExecutor();
  BackgroundExecutor(const BackgroundExecutor&) = delete;
  BackgroundExecutor& operator=(const BackgroundExecutor&) = delete;

  // Queues `task`; false (and the task is not run) when `queue_limit` tasks
  // are already waiting.
  bool TrySubmit(std::function<void()> task);

 private:
  void Loop();

  const size_t queue_limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_BACKGROUND_EXECUTOR_H_
