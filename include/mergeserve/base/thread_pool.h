// A fixed-size worker pool with a blocking ParallelFor.
//
// Work is split into index ranges whose boundaries depend only on the caller's
// grain, never on the thread count, so reductions that combine per-range
// results in range order are bit-identical for any --threads value.
#ifndef MERGESERVE_BASE_THREAD_POOL_H_
#define MERGESERVE_BASE_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace mergeserve {

class ThreadPool {
 public:
  // num_threads <= 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(task_index, worker_id) for every task in [0, num_tasks), using
  // the calling thread as one of the workers. worker_id is in
  // [0, num_threads()) and lets callers keep per-worker scratch state.
  void Run(int64_t num_tasks, const std::function<void(int64_t, int)>& fn);

 private:
  void WorkerLoop(int worker_id);
  void Drain(int worker_id);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  const std::function<void(int64_t, int)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t num_tasks_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_task_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t finished_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_THREAD_POOL_H_
