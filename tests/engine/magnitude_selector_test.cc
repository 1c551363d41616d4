#include "mergeserve/engine/magnitude_selector.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using testing::TempDir;
using testing::TestModel;

// Brute force: sorted magnitudes of model - base over the listed tensors.
std::vector<float> Magnitudes(const TestModel& base, const TestModel& m,
                              const std::vector<std::string>& names) {
  std::vector<float> out;
  for (const auto& n : names) {
    for (size_t i = 0; i < base.at(n).values.size(); ++i) {
      // Values are written as bf16: compare on the rounded inputs.
      const float b = Bf16ToF32(F32ToBf16(base.at(n).values[i]));
      const float x = Bf16ToF32(F32ToBf16(m.at(n).values[i]));
      out.push_back(std::fabs(x - b));
    }
  }
  std::sort(out.begin(), out.end(), std::greater<float>());
  return out;
}

class SelectorTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(SelectorTest, MatchesSortingOnTiesHeavyBf16Data) {
  const std::string dir = TempDir("sel");
  std::mt19937 rng(7);
  TestModel base, expert;
  const std::vector<std::string> names = {"a", "b", "c"};
  const std::vector<int64_t> sizes = {1000, 70000, 5};
  for (size_t i = 0; i < names.size(); ++i) {
    auto b = testing::RandomValues(static_cast<size_t>(sizes[i]), rng);
    auto e = b;
    auto d = testing::RandomValues(e.size(), rng, 0.05f);
    for (size_t j = 0; j < e.size(); ++j) e[j] += d[j];
    base[names[i]] = {{sizes[i]}, b, DType::kBF16};
    expert[names[i]] = {{sizes[i]}, e, DType::kBF16};
  }
  testing::WriteModel(dir + "/base", base);
  testing::WriteModel(dir + "/e", expert);
  auto config = MergeConfig::FromYaml(
      "merge_method: ties\nbase_model: base\nmodels: [e]\n", dir);
  ASSERT_TRUE(config.ok());
  auto plan = MergePlan::Create(*config, LocalPathResolver(dir));
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<const PlannedTensor*> domain;
  for (const auto& t : (*plan)->tensors()) domain.push_back(&t);
  ThreadPool pool(2);
  MagnitudeSelector selector(**plan, pool, GetParam());
  const auto sorted = Magnitudes(base, expert, {"a", "b", "c"});
  const int64_t n = static_cast<int64_t>(sorted.size());
  std::vector<SelectionQuery> queries;
  for (int64_t k : {int64_t{1}, int64_t{2}, n / 10, n / 2, n - 1, n})
    queries.push_back({0, k});
  auto results = selector.Select(domain, queries);
  ASSERT_TRUE(results.ok()) << results.status();
  for (size_t q = 0; q < queries.size(); ++q) {
    const float v = sorted[static_cast<size_t>(queries[q].k - 1)];
    const auto& r = (*results)[q];
    EXPECT_EQ(r.value, v) << "k=" << queries[q].k;
    EXPECT_EQ(r.count_greater, std::count_if(sorted.begin(), sorted.end(),
                                             [&](float x) { return x > v; }));
    EXPECT_EQ(r.count_equal, std::count(sorted.begin(), sorted.end(), v));
    // Per-chunk equal counts, when recorded, add up and match the fallback.
    auto per_chunk = selector.CountEqualPerChunk(domain, 0, v);
    ASSERT_TRUE(per_chunk.ok());
    int64_t total = 0;
    for (int64_t c : *per_chunk) total += c;
    EXPECT_EQ(total, r.count_equal);
    if (!r.chunk_equal.empty()) {
      EXPECT_EQ(r.chunk_equal, *per_chunk);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, SelectorTest,
                         ::testing::Values(16, 4096, 1 << 14));

}  // namespace
}  // namespace mergeserve
