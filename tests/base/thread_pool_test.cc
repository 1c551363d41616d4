#include "mergeserve/base/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(ThreadPoolTest, ThreadCountCountsTheCaller) {
  EXPECT_EQ(ThreadPool(1).num_threads(), 1);
  EXPECT_EQ(ThreadPool(3).num_threads(), 3);
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  EXPECT_EQ(ThreadPool(0).num_threads(), cores > 0 ? cores : 1);
  EXPECT_EQ(ThreadPool(-2).num_threads(), cores > 0 ? cores : 1);
}

// Every index runs exactly once, on a worker id callers can index scratch
// with, for task counts below, at and far above the thread count.
TEST(ThreadPoolTest, RunsEveryTaskOnceWithWorkerIdsInRange) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    for (int64_t tasks : {0, 1, 2, 3, 4, 5, 1000}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(tasks));
      std::atomic<int> bad_worker{0};
      pool.Run(tasks, [&](int64_t i, int worker) {
        runs[static_cast<size_t>(i)].fetch_add(1);
        if (worker < 0 || worker >= pool.num_threads()) bad_worker = 1;
      });
      for (int64_t i = 0; i < tasks; ++i) {
        ASSERT_EQ(runs[static_cast<size_t>(i)].load(), 1)
            << "task " << i << " of " << tasks << ", " << threads << " threads";
      }
      EXPECT_EQ(bad_worker.load(), 0);
    }
  }
}

// Run returns only once every task has finished, slow ones included, and
// back-to-back runs neither lose a wake-up (the test would hang) nor let a
// worker run a task of the previous run's function.
TEST(ThreadPoolTest, RunWaitsForEveryTaskAcrossManyRuns) {
  ThreadPool pool(4);
  for (int round = 0; round < 2000; ++round) {
    std::atomic<int64_t> sum{0};
    const int64_t tasks = 1 + round % 7;
    pool.Run(tasks, [&, round](int64_t i, int) {
      if (round % 500 == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      sum.fetch_add(i + 1 + round);
    });
    ASSERT_EQ(sum.load(), tasks * (tasks + 1) / 2 + tasks * round)
        << "round " << round;
  }
}

// num_threads() tasks that each wait for all the others can only finish if
// they run at once, one per worker (the caller included).
TEST(ThreadPoolTest, RunsTasksConcurrentlyOnEveryWorker) {
  ThreadPool pool(3);
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  std::vector<int> worker_of(3, -1);
  std::atomic<int> timed_out{0};
  pool.Run(3, [&](int64_t i, int worker) {
    std::unique_lock<std::mutex> lock(mu);
    worker_of[static_cast<size_t>(i)] = worker;
    ++started;
    cv.notify_all();
    if (!cv.wait_for(lock, std::chrono::seconds(60),
                     [&] { return started == 3; })) {
      timed_out = 1;
    }
  });
  EXPECT_EQ(timed_out.load(), 0);
  std::vector<int> sorted = worker_of;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int>{0, 1, 2}));
}

TEST(ThreadPoolTest, OneThreadRunsInOrderOnTheCaller) {
  ThreadPool pool(1);
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<int64_t> order;
  bool elsewhere = false;
  pool.Run(5, [&](int64_t i, int worker) {
    order.push_back(i);
    elsewhere =
        elsewhere || worker != 0 || std::this_thread::get_id() != caller;
  });
  EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  EXPECT_FALSE(elsewhere);
}

}  // namespace
}  // namespace mergeserve
