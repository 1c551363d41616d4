#include "methods/tie_ledger.h"

#include <atomic>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "mergeserve/base/thread_pool.h"

namespace mergeserve {
namespace {

// Chunks run on four threads in the pool's order: each keeps the first
// `need` ties over the chunks before it, as a sequential prefix would.
TEST(TieLedgerTest, KeepsTheFirstTiesInChunkOrder) {
  std::mt19937 rng(11);
  std::vector<int64_t> equal(5000);
  int64_t total = 0;
  for (auto& e : equal) total += e = static_cast<int64_t>(rng() % 7);
  ThreadPool pool(4);
  for (int64_t need : {int64_t{0}, int64_t{1}, total / 3, total - 1, total}) {
    TieLedger ledger(static_cast<int64_t>(equal.size()), need);
    std::vector<int64_t> got(equal.size(), -2);
    pool.Run(static_cast<int64_t>(equal.size()), [&](int64_t c, int) {
      got[static_cast<size_t>(c)] =
          ledger.Allow(c, equal[static_cast<size_t>(c)], [] { return false; });
    });
    int64_t left = need;
    for (size_t c = 0; c < equal.size(); ++c) {
      const int64_t want = std::min(equal[c], left);
      left -= want;
      ASSERT_EQ(got[c], want) << "need " << need << ", chunk " << c;
    }
  }
}

// A chunk that stops before publishing (its pass failed) must not hang the
// chunks after it: they give up once abandon() says so.
TEST(TieLedgerTest, WaitersGiveUpWhenThePassFails) {
  ThreadPool pool(2);
  TieLedger ledger(100, 50);
  std::atomic<bool> failed{false};
  std::vector<int64_t> got(100, -2);
  pool.Run(100, [&](int64_t c, int) {
    if (c == 10) {  // fails: never publishes
      failed = true;
      return;
    }
    got[static_cast<size_t>(c)] =
        ledger.Allow(c, 1, [&] { return failed.load(); });
  });
  for (int64_t c = 0; c < 10; ++c) EXPECT_EQ(got[static_cast<size_t>(c)], 1);
  for (int64_t c = 11; c < 100; ++c) EXPECT_EQ(got[static_cast<size_t>(c)], -1);
}

}  // namespace
}  // namespace mergeserve
