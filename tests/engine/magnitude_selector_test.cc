#include "mergeserve/engine/magnitude_selector.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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

// f32 task vectors whose magnitudes are exact powers of two (low 16 bits
// zero, many ties) and values with low bits set above them. A k-th entry
// among the former is exact from the first pass (no per-chunk tie counts
// recorded); one among the latter takes the second pass, which records them;
// a query that wants tie counts always gets them.
TEST(SelectorPassesTest, ResolvesFromTheFirstPassWhereItIsExact) {
  const std::string dir = TempDir("sel_passes");
  const int64_t n = 20000;
  std::vector<float> b(static_cast<size_t>(n), 0.0f), e(b.size());
  std::mt19937 rng(3);
  std::vector<float> mags;
  for (int64_t i = 0; i < n; ++i) {
    float m;
    if (i % 10 == 0) {
      m = 1.0f + static_cast<float>(rng() % 1000) / 997.0f;  // low bits set
    } else {
      m = std::ldexp(1.0f, -static_cast<int>(rng() % 4));  // 1, 1/2, 1/4, 1/8
    }
    e[static_cast<size_t>(i)] = (rng() & 1) ? m : -m;
    mags.push_back(m);
  }
  testing::WriteModel(dir + "/base", {{"a", {{n}, b, DType::kF32}}});
  testing::WriteModel(dir + "/e", {{"a", {{n}, e, DType::kF32}}});
  auto config = MergeConfig::FromYaml(
      "merge_method: ties\nbase_model: base\nmodels: [e]\n", dir);
  ASSERT_TRUE(config.ok());
  auto plan = MergePlan::Create(*config, LocalPathResolver(dir));
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::vector<const PlannedTensor*> domain = {&(*plan)->tensors()[0]};
  ThreadPool pool(2);
  MagnitudeSelector selector(**plan, pool, 4096);
  std::sort(mags.begin(), mags.end(), std::greater<float>());
  const int64_t low_set = n / 10;  // all above the powers of two but 1.0
  for (bool ties : {false, true}) {
    for (int64_t k : {int64_t{5}, low_set - 3, low_set + 100, n / 2, n - 1}) {
      auto r = selector.Select(domain, {{0, k, ties}});
      ASSERT_TRUE(r.ok()) << r.status();
      const float v = mags[static_cast<size_t>(k - 1)];
      const SelectionResult& got = (*r)[0];
      EXPECT_EQ(got.value, v) << "k=" << k;
      EXPECT_EQ(got.count_greater,
                std::count_if(mags.begin(), mags.end(),
                              [&](float x) { return x > v; }));
      EXPECT_EQ(got.count_equal, std::count(mags.begin(), mags.end(), v));
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const bool one_pass = (bits & 0xffffu) == 0 && !ties;
      EXPECT_EQ(got.chunk_equal.empty(), one_pass) << "k=" << k;
      if (!got.chunk_equal.empty()) {
        auto per_chunk = selector.CountEqualPerChunk(domain, 0, v);
        ASSERT_TRUE(per_chunk.ok());
        EXPECT_EQ(got.chunk_equal, *per_chunk) << "k=" << k;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, SelectorTest,
                         ::testing::Values(16, 4096, 1 << 14));

}  // namespace
}  // namespace mergeserve
