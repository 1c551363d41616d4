// The one bounded executor: queue limit, memory admission, cancellation of
// queued and running items, draining, and a fixed number of threads.
#include "mergeserve/jobs/work_executor.h"

#include <dirent.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

int ThreadCount() {
  int n = 0;
  DIR* d = opendir("/proc/self/task");
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// A gate the items wait on, so tests decide when they finish.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int running = 0, most = 0, finished = 0;
  void Wait(const std::atomic<bool>& cancelled) {
    std::unique_lock<std::mutex> lock(mu);
    most = std::max(most, ++running);
    cv.notify_all();
    // Work polls its cancel flag; so does this.
    while (!cv.wait_for(lock, std::chrono::milliseconds(5),
                        [&] { return open || cancelled.load(); })) {
    }
    --running;
    ++finished;
    cv.notify_all();
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
  void WaitFor(const std::function<bool()>& what) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(30), what);
  }
};

WorkItem Item(Gate& g, int64_t memory, std::atomic<int>* abandoned = nullptr) {
  WorkItem w;
  w.kind = "test";
  w.memory = memory;
  w.run = [&g](const std::atomic<bool>& c) { g.Wait(c); };
  w.abandon = [abandoned](const absl::Status&) {
    if (abandoned) ++*abandoned;
  };
  return w;
}

TEST(WorkExecutorTest, TheBudgetAdmitsOnlyWhatFitsAndRefusesWhatNeverCan) {
  WorkExecutor::Options o;
  o.workers = 4;
  o.memory_budget = 100;
  WorkExecutor ex(o);
  Gate unused;
  auto too_big = ex.Submit(Item(unused, 101));
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(too_big.status().message()),
              HasSubstr("memory budget"));
  Gate g;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ex.Submit(Item(g, 60)).ok());
  // 60 + 60 > 100: one at a time, although four workers are idle.
  g.WaitFor([&] { return g.running == 1; });
  EXPECT_EQ(ex.stats().memory_in_use, 60);
  g.Open();
  g.WaitFor([&] { return g.finished == 4; });
  EXPECT_EQ(g.most, 1);
}

TEST(WorkExecutorTest, AFullQueueIsResourceExhausted) {
  WorkExecutor::Options o;
  o.workers = 1;
  o.queue_limit = 2;
  WorkExecutor ex(o);
  Gate g;
  ASSERT_TRUE(ex.Submit(Item(g, 0)).ok());  // runs
  g.WaitFor([&] { return g.running == 1; });
  ASSERT_TRUE(ex.Submit(Item(g, 0)).ok());
  ASSERT_TRUE(ex.Submit(Item(g, 0)).ok());
  auto full = ex.Submit(Item(g, 0));
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(ex.Submit(Item(g, 0), /*force=*/true).ok());
  g.Open();
}

TEST(WorkExecutorTest, CancelAbandonsQueuedItemsAndSignalsRunningOnes) {
  WorkExecutor::Options o;
  o.workers = 1;
  WorkExecutor ex(o);
  Gate g;
  std::atomic<int> abandoned{0};
  auto running = ex.Submit(Item(g, 0, &abandoned));
  g.WaitFor([&] { return g.running == 1; });
  auto queued = ex.Submit(Item(g, 0, &abandoned));
  ASSERT_TRUE(queued.ok());
  (*queued)->Cancel();
  EXPECT_EQ(abandoned, 1);
  EXPECT_EQ(ex.stats().queued, 0);
  (*running)->Cancel();  // the item sees its flag
  g.WaitFor([&] { return g.finished == 1; });
  EXPECT_EQ(g.finished, 1);
}

TEST(WorkExecutorTest, DrainAbandonsWhatWaitsAndRefusesNewWork) {
  WorkExecutor::Options o;
  o.workers = 1;
  WorkExecutor ex(o);
  Gate g;
  std::atomic<int> abandoned{0};
  ASSERT_TRUE(ex.Submit(Item(g, 0, &abandoned)).ok());
  g.WaitFor([&] { return g.running == 1; });
  ASSERT_TRUE(ex.Submit(Item(g, 0, &abandoned)).ok());
  ex.Drain(std::chrono::milliseconds(10));  // then cancels the running one
  EXPECT_EQ(g.finished, 1);
  EXPECT_EQ(abandoned, 1);
  EXPECT_EQ(ex.Submit(Item(g, 0)).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(WorkExecutorTest, ManyItemsUseTheSameFewThreads) {
  WorkExecutor::Options o;
  o.workers = 2;
  o.queue_limit = 100;
  WorkExecutor ex(o);
  const int before = ThreadCount();
  Gate g;
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(ex.Submit(Item(g, 0)).ok());
  g.WaitFor([&] { return g.running == 2; });
  EXPECT_LE(ThreadCount(), before);  // the workers already existed
  g.Open();
  g.WaitFor([&] { return g.finished == 50; });
  EXPECT_EQ(g.most, 2);
}

}  // namespace
}  // namespace mergeserve
