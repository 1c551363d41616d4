// What a sweep tells its points' merges to keep, from its grid alone (the
// merges' side is in tests/engine/task_vector_cache_test.cc).
#include "mergeserve/jobs/sweep_runner.h"

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(SweepRunnerTest, CacheHintFollowsWhatTheGridVaries) {
  const SweepAxis lambdas{"lambda", {0.5, 1.0}};
  const SweepAxis weights{"weight@math", {0.5, 1.0, 2.0}};
  const SweepAxis densities{"density", {0.2, 0.4}};
  // λ fastest (the RPC puts it last): each q is read by its row (a row
  // merged in batches overrides this; see RunSweep).
  EXPECT_EQ(SweepCacheHint({lambdas}), CacheHint::kUpdate);
  EXPECT_EQ(SweepCacheHint({weights, lambdas}), CacheHint::kUpdate);
  EXPECT_EQ(SweepCacheHint({densities, weights, lambdas}), CacheHint::kUpdate);
  // Only weights, over many points: the trimmed τ, from the first point
  // on. Over a few, neither (keeping τ would cost more than it saves).
  const SweepAxis many{"weight@code",
                       std::vector<double>(kMinPointsToKeepTrimmed, 1.0)};
  std::vector<double> values;
  for (size_t i = 0; i <= kMinPointsToKeepTrimmed; ++i) values.push_back(i);
  EXPECT_EQ(SweepCacheHint({{"weight@code", values}}), CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({weights, {"weight@code", {1, 3, 5, 7, 9, 11}}}),
            CacheHint::kTrimmed);  // 18 points
  EXPECT_EQ(SweepCacheHint({weights}), CacheHint::kNone);
  EXPECT_EQ(SweepCacheHint({weights, {"weight@code", {1, 3}}}),
            CacheHint::kNone);  // 6 points
  // Densities (and weights): neither.
  EXPECT_EQ(SweepCacheHint({densities}), CacheHint::kNone);
  EXPECT_EQ(SweepCacheHint({weights, {"gamma", {0.01, 0.02}}}),
            CacheHint::kNone);
  // λ slower than weights, or a number that may act after q: the guess.
  EXPECT_EQ(SweepCacheHint({lambdas, weights}), CacheHint::kGuess);
  EXPECT_EQ(SweepCacheHint({weights, {"consensus_k", {1, 2}}}),
            CacheHint::kGuess);
  // An axis of one value (or one value repeated) varies nothing, though
  // its values count as points.
  EXPECT_EQ(SweepCacheHint({{"lambda", {0.7, 0.7}}, {"weight@code", values}}),
            CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({{"density", {0.3}}, {"weight@code", values}}),
            CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({many}), CacheHint::kGuess);
  EXPECT_EQ(SweepCacheHint({}), CacheHint::kGuess);
}

}  // namespace
}  // namespace mergeserve
