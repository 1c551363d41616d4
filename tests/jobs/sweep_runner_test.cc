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
  // Only λ: the merged update is read by the later points.
  EXPECT_EQ(SweepCacheHint({lambdas}), CacheHint::kGuess);
  // Only weights: the trimmed τ, from the first point on.
  EXPECT_EQ(SweepCacheHint({weights}), CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({weights, {"weight@code", {1, 3}}}),
            CacheHint::kTrimmed);
  // Densities or other numbers: neither.
  EXPECT_EQ(SweepCacheHint({densities}), CacheHint::kNone);
  EXPECT_EQ(SweepCacheHint({weights, {"alpha", {0.1, 0.9}}}), CacheHint::kNone);
  // λ with more: rows of λ points share an update.
  EXPECT_EQ(SweepCacheHint({weights, lambdas}), CacheHint::kGuess);
  // An axis of one value (or one value repeated) varies nothing.
  EXPECT_EQ(SweepCacheHint({{"lambda", {0.7, 0.7}}, weights}),
            CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({{"density", {0.3}}, weights}), CacheHint::kTrimmed);
  EXPECT_EQ(SweepCacheHint({}), CacheHint::kGuess);
}

}  // namespace
}  // namespace mergeserve
