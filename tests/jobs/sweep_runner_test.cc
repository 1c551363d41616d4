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
  // λ fastest (the RPC puts it last): each q is read by its row.
  EXPECT_EQ(SweepCacheHint({lambdas}), CacheHint::kUpdate);
  EXPECT_EQ(SweepCacheHint({weights, lambdas}), CacheHint::kUpdate);
  EXPECT_EQ(SweepCacheHint({densities, weights, lambdas}), CacheHint::kUpdate);
  // Only weights: the trimmed τ, from the first point on.
  EXPECT_EQ(SweepCacheHint({weights}), CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({weights, {"weight@code", {1, 3}}}),
            CacheHint::kTrimmed);
  // Densities (and weights): neither.
  EXPECT_EQ(SweepCacheHint({densities}), CacheHint::kNone);
  EXPECT_EQ(SweepCacheHint({weights, {"gamma", {0.01, 0.02}}}),
            CacheHint::kNone);
  // λ slower than weights, or a number that may act after q: the guess.
  EXPECT_EQ(SweepCacheHint({lambdas, weights}), CacheHint::kGuess);
  EXPECT_EQ(SweepCacheHint({weights, {"consensus_k", {1, 2}}}),
            CacheHint::kGuess);
  // An axis of one value (or one value repeated) varies nothing.
  EXPECT_EQ(SweepCacheHint({{"lambda", {0.7, 0.7}}, weights}),
            CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({{"density", {0.3}}, weights}), CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({}), CacheHint::kGuess);
}

}  // namespace
}  // namespace mergeserve
