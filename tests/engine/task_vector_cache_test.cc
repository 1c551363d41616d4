#include "mergeserve/engine/task_vector_cache.h"

#include <random>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

TEST(TaskVectorCacheTest, EvictsLeastRecentlyUsedBeyondTheByteBudget) {
  TaskVectorCache cache(100);
  cache.Put("a", std::make_shared<int>(1), 40);
  cache.Put("b", std::make_shared<int>(2), 40);
  ASSERT_NE(cache.GetAs<int>("a"), nullptr);     // a is now the most recent
  cache.Put("c", std::make_shared<int>(3), 40);  // evicts b
  EXPECT_EQ(cache.GetAs<int>("b"), nullptr);
  EXPECT_EQ(*cache.GetAs<int>("a"), 1);
  EXPECT_EQ(*cache.GetAs<int>("c"), 3);
  cache.Put("huge", std::make_shared<int>(4), 1000);  // larger than the cache
  EXPECT_EQ(cache.GetAs<int>("huge"), nullptr);
  const CacheStats s = cache.stats();
  EXPECT_EQ(s.bytes, 80);
  EXPECT_EQ(s.entries, 2);
  EXPECT_EQ(s.hits, 3);
  EXPECT_EQ(s.misses, 2);
}

// Merges with a shared cache must give exactly what cold merges give, while
// reusing the selections across a λ sweep.
class CachedMergeTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CachedMergeTest, SweepReusesSelectionsAndMatchesColdMerges) {
  const std::string dir = testing::TempDir("cache");
  std::mt19937 rng(9);
  testing::TestModel base;
  base["model.layers.0.w"] = {
      {200, 64}, testing::RandomValues(200 * 64, rng), DType::kBF16};
  base["model.layers.1.w"] = {
      {100, 64}, testing::RandomValues(100 * 64, rng), DType::kBF16};
  testing::WriteModel(dir + "/base", base);
  for (int e = 0; e < 2; ++e) {
    testing::TestModel m = base;
    for (auto& [n, t] : m) {
      auto d = testing::RandomValues(t.values.size(), rng, 0.05f);
      for (size_t j = 0; j < d.size(); ++j) t.values[j] += d[j];
    }
    testing::WriteModel(dir + "/e" + std::to_string(e), m);
  }
  TaskVectorCache cache(1 << 20);
  MergeOptions cached;
  cached.cache = &cache;
  cached.digest = [](const std::string& ref) { return "digest-of-" + ref; };
  int64_t hits_before = 0;
  for (double lambda : {0.5, 0.8, 1.1}) {
    const std::string yaml =
        std::string(
            "merge_method: ties\nbase_model: base\nmodels:\n"
            "  - model: e0\n    parameters: {density: 0.3}\n"
            "  - model: e1\n    parameters: {density: 0.4}\n"
            "parameters: {lambda: ") +
        std::to_string(lambda) + ", " + GetParam() + "}\n";
    auto warm = testing::Merge(dir, yaml, cached);
    auto cold = testing::Merge(dir, yaml);
    ASSERT_TRUE(warm.ok() && cold.ok()) << warm.status();
    EXPECT_EQ(*warm, *cold) << "lambda " << lambda;
    if (lambda != 0.5) {
      EXPECT_GT(cache.stats().hits, hits_before)
          << "no reuse at lambda " << lambda;
    }
    hits_before = cache.stats().hits;
  }
  EXPECT_GT(cache.stats().entries, 0);
}

INSTANTIATE_TEST_SUITE_P(Scopes, CachedMergeTest,
                         ::testing::Values("trim_scope: tensor",
                                           "trim_scope: model",
                                           "keep: threshold"));

}  // namespace
}  // namespace mergeserve
