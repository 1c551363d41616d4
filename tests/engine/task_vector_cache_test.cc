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

// Room is made before the caller allocates what it will put: the least
// recently used entries go first, and their values are released then.
TEST(TaskVectorCacheTest, MakeRoomEvictsLeastRecentlyUsedFirst) {
  TaskVectorCache cache(100);
  auto a = std::make_shared<int>(1);
  std::weak_ptr<int> a_alive = a;
  cache.Put("a", std::move(a), 40);
  cache.Put("b", std::make_shared<int>(2), 40);
  cache.MakeRoom(20);  // 80 + 20 fit: nothing goes
  EXPECT_EQ(cache.stats().entries, 2);
  cache.MakeRoom(50);  // a, the least recent, goes
  EXPECT_TRUE(a_alive.expired());
  EXPECT_EQ(cache.GetAs<int>("a"), nullptr);
  EXPECT_EQ(*cache.GetAs<int>("b"), 2);
  EXPECT_EQ(cache.stats().bytes, 40);
  cache.MakeRoom(100);  // the whole budget: everything goes
  EXPECT_EQ(cache.stats().entries, 0);
  EXPECT_EQ(cache.stats().bytes, 0);
}

// Evicted values are released after the cache's lock: one whose destructor
// calls back into the cache (a large buffer's unmap need not, but must not
// stall every other lookup) does not deadlock.
TEST(TaskVectorCacheTest, EvictedValuesAreReleasedOutsideTheLock) {
  TaskVectorCache cache(100);
  struct CallsBack {
    CallsBack(TaskVectorCache* c, int* r) : cache(c), released(r) {}
    TaskVectorCache* cache;
    int* released;
    ~CallsBack() {
      cache->stats();
      ++*released;
    }
  };
  int released = 0;
  cache.Put("a", std::make_shared<CallsBack>(&cache, &released), 60);
  cache.Put("b", std::make_shared<CallsBack>(&cache, &released),
            60);  // evicts a
  EXPECT_EQ(released, 1);
  cache.MakeRoom(100);  // evicts b
  EXPECT_EQ(released, 2);
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
  testing::WriteExperts(dir, base, 2, rng, 0.05f);
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

// A merge of experts e0 (weight w0), e1 and e2 at three densities.
std::string ThreeExperts(const std::string& method, double lambda, double w0,
                         const std::string& params) {
  return "merge_method: " + method +
         "\nbase_model: base\nmodels:\n"
         "  - model: e0\n    parameters: {density: 0.3, weight: " +
         std::to_string(w0) +
         "}\n"
         "  - model: e1\n    parameters: {density: 0.5}\n"
         "  - model: e2\n    parameters: {density: 0.4}\n"
         "parameters: {lambda: " +
         std::to_string(lambda) + (params.empty() ? "" : ", ") + params + "}\n";
}

// A λ-only change reads the cached merged update (no new misses: neither the
// update nor a selection is computed again) and gives the cold merge's bytes;
// a weight change computes a new update from the cached selections.
TEST(CachedUpdateTest, LambdaOnlyPointsReuseTheMergedUpdate) {
  const std::string dir = testing::TempDir("update");
  std::mt19937 rng(5);
  testing::TestModel base;
  base["a"] = {{120, 40}, testing::RandomValues(120 * 40, rng), DType::kBF16};
  base["b"] = {{40}, testing::RandomValues(40, rng), DType::kF32};
  testing::WriteExperts(dir, base, 3, rng, 0.05f);
  struct Case {
    const char* method;
    const char* params;
  };
  for (const Case& c :
       {Case{"ties", ""}, Case{"ties", "semantics: paper"},
        Case{"ties", "consensus: count, zero_sign: majority"},
        Case{"breadcrumbs_ties", "gamma: 0.05"}, Case{"dare_ties", "seed: 3"},
        Case{"della", "seed: 4"}, Case{"task_arithmetic", "normalize: true"}}) {
    TaskVectorCache cache(1 << 22);
    MergeOptions cached;
    cached.cache = &cache;
    cached.digest = [](const std::string& ref) { return "digest-of-" + ref; };
    auto yaml = [&](double lambda, double w0) {
      return ThreeExperts(c.method, lambda, w0, c.params);
    };
    int64_t misses = 0;
    for (double lambda : {0.7, 1.0, 1.3}) {
      auto warm = testing::Merge(dir, yaml(lambda, 1.0), cached);
      auto cold = testing::Merge(dir, yaml(lambda, 1.0));
      ASSERT_TRUE(warm.ok() && cold.ok()) << c.method << warm.status();
      EXPECT_EQ(*warm, *cold) << c.method << " " << c.params << " " << lambda;
      if (lambda != 0.7) {
        EXPECT_EQ(cache.stats().misses, misses)
            << c.method << " " << c.params << ": recomputed at " << lambda;
      }
      misses = cache.stats().misses;
    }
    // New weights: one new update per tensor, the selections reused. The
    // first new weight keeps each expert's trimmed τ (magnitude trims), and
    // the next rebuilds it from there: only the updates are missed again.
    for (double w0 : {0.6, 0.4}) {
      auto warm = testing::Merge(dir, yaml(1.0, w0), cached);
      auto cold = testing::Merge(dir, yaml(1.0, w0));
      ASSERT_TRUE(warm.ok() && cold.ok()) << c.method << warm.status();
      EXPECT_EQ(*warm, *cold)
          << c.method << " " << c.params << " weight " << w0;
      if (w0 == 0.4) {
        EXPECT_EQ(cache.stats().misses, misses + 2)
            << c.method << " " << c.params;
      }
      misses = cache.stats().misses;
    }
  }
}

// A sweep tells its merges what later points reuse. Over weights
// (kTrimmed) the first point keeps each expert's trimmed τ, so the next ones
// miss only the merged updates; q is never kept. Where λ varies fastest
// (kUpdate) every row of λ points reads one q, the rows after the first
// included (the guess would keep τ there instead). Where nothing is reused
// (kNone) a λ-only change computes q again. Every point gives the cold
// merge's bytes; tensor c spans four chunks, so exact keep's ties are
// counted across chunks while τ is kept.
TEST(CachedUpdateTest, SweepHintsSayWhatIsKept) {
  const std::string dir = testing::TempDir("hint");
  std::mt19937 rng(7);
  testing::TestModel base;
  base["a"] = {{120, 40}, testing::RandomValues(120 * 40, rng), DType::kBF16};
  base["b"] = {{64, 40}, testing::RandomValues(64 * 40, rng), DType::kBF16};
  base["c"] = {{200, 256}, testing::RandomValues(200 * 256, rng), DType::kBF16};
  testing::WriteExperts(dir, base, 3, rng, 0.05f);
  constexpr int kTensors = 3;
  struct Case {
    const char* method;
    const char* params;
  };
  for (const Case& c : {Case{"ties", ""}, Case{"ties", "keep: threshold"},
                        Case{"ties", "consensus: count, zero_sign: majority"},
                        Case{"breadcrumbs_ties", "gamma: 0.05"}}) {
    SCOPED_TRACE(std::string(c.method) + " " + c.params);
    auto merge = [&](TaskVectorCache& cache, CacheHint hint, double lambda,
                     double w0) {
      MergeOptions o;
      o.cache = &cache;
      o.digest = [](const std::string& ref) { return "digest-of-" + ref; };
      o.cache_hint = hint;
      const std::string yaml = ThreeExperts(c.method, lambda, w0, c.params);
      auto warm = testing::Merge(dir, yaml, o);
      auto cold = testing::Merge(dir, yaml);
      ASSERT_TRUE(warm.ok() && cold.ok()) << warm.status();
      EXPECT_EQ(*warm, *cold) << "lambda " << lambda << " weight " << w0;
    };
    {
      TaskVectorCache cache(1 << 22);
      merge(cache, CacheHint::kTrimmed, 1.0, 1.0);
      const int64_t kept = cache.stats().bytes;
      for (double w0 : {0.6, 0.4}) {
        const int64_t misses = cache.stats().misses;
        merge(cache, CacheHint::kTrimmed, 1.0, w0);
        // The updates, never kept; τ and trims found.
        EXPECT_EQ(cache.stats().misses, misses + kTensors) << "weight " << w0;
      }
      // Trims and τ from the first point only: no update was added.
      EXPECT_EQ(cache.stats().bytes, kept);
    }
    {
      TaskVectorCache cache(1 << 22);
      for (double w0 : {1.0, 0.6, 0.4}) {
        merge(cache, CacheHint::kUpdate, 0.5, w0);
        const int64_t misses = cache.stats().misses;
        merge(cache, CacheHint::kUpdate, 1.0, w0);  // q read back
        EXPECT_EQ(cache.stats().misses, misses) << "weight " << w0;
      }
    }
    {
      TaskVectorCache cache(1 << 22);
      merge(cache, CacheHint::kNone, 0.7, 0.6);
      const int64_t misses = cache.stats().misses;
      // No q was kept, and no τ is looked for.
      merge(cache, CacheHint::kNone, 0.9, 0.6);
      EXPECT_EQ(cache.stats().misses, misses + kTensors);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Scopes, CachedMergeTest,
                         ::testing::Values("trim_scope: tensor",
                                           "trim_scope: model",
                                           "keep: threshold"));

}  // namespace
}  // namespace mergeserve
