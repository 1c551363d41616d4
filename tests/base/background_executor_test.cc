// The background executor runs every accepted task, refuses work beyond its
// backlog, and joins on destruction (under ASan/UBSan with the format tests).
#include "mergeserve/base/background_executor.h"

#include <atomic>
#include <chrono>
#include <future>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(BackgroundExecutorTest, RunsAcceptedTasksAndRefusesBeyondTheBacklog) {
  std::atomic<int> ran{0};
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  {
    BackgroundExecutor ex(1, 2);
    // The only thread blocks on the gate; then two tasks fit the backlog.
    std::promise<void> started;
    ASSERT_TRUE(ex.TrySubmit([&] {
      started.set_value();
      gate.wait();
      ++ran;
    }));
    started.get_future().wait();
    EXPECT_TRUE(ex.TrySubmit([&] { ++ran; }));
    EXPECT_TRUE(ex.TrySubmit([&] { ++ran; }));
    EXPECT_FALSE(ex.TrySubmit([&] { ++ran; }));  // refused, never runs
    release.set_value();
  }  // the destructor runs what was accepted, then joins
  EXPECT_EQ(ran.load(), 3);
}

TEST(BackgroundExecutorTest, UsesSeveralThreads) {
  BackgroundExecutor ex(2, 8);
  std::promise<void> a, b;
  auto fa = a.get_future();
  auto fb = b.get_future();
  // Each task waits for the other: only two threads can finish both.
  std::shared_future<void> sa = fa.share(), sb = fb.share();
  std::atomic<int> done{0};
  ASSERT_TRUE(ex.TrySubmit([&] {
    a.set_value();
    sb.wait();
    ++done;
  }));
  ASSERT_TRUE(ex.TrySubmit([&] {
    b.set_value();
    sa.wait();
    ++done;
  }));
  for (int i = 0; i < 500 && done.load() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(done.load(), 2);
}

}  // namespace
}  // namespace mergeserve
