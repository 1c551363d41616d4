#include "mergeserve/engine/magnitude_selector.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
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

// Checks r.chunk_keep: the first `need` entries == r.value in flat order,
// given their count per chunk. kAllTies must mean all of a chunk's.
void ExpectKeepsFirstTies(const SelectionResult& r, int64_t need,
                          const std::vector<int64_t>& per_chunk) {
  ASSERT_EQ(r.chunk_keep.size(), per_chunk.size());
  int64_t left = need;
  for (size_t c = 0; c < per_chunk.size(); ++c) {
    const int64_t want = std::min(per_chunk[c], left);
    left -= want;
    if (r.chunk_keep[c] == kAllTies) {
      EXPECT_EQ(want, per_chunk[c]) << "chunk " << c;
    } else {
      EXPECT_EQ(r.chunk_keep[c], want) << "chunk " << c;
    }
  }
}

// A TIES plan of one expert `e` over `base`, written to dir.
std::unique_ptr<MergePlan> PlanFor(const std::string& dir,
                                   const TestModel& base,
                                   const TestModel& expert) {
  testing::WriteModel(dir + "/base", base);
  testing::WriteModel(dir + "/e", expert);
  auto config = MergeConfig::FromYaml(
      "merge_method: ties\nbase_model: base\nmodels: [e]\n", dir);
  EXPECT_TRUE(config.ok());
  auto plan = MergePlan::Create(*config, LocalPathResolver(dir));
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? std::move(*plan) : nullptr;
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
  std::unique_ptr<MergePlan> plan = PlanFor(dir, base, expert);
  ASSERT_NE(plan, nullptr);
  std::vector<const PlannedTensor*> domain;
  for (const auto& t : plan->tensors()) domain.push_back(&t);
  ThreadPool pool(2);
  MagnitudeSelector selector(*plan, pool, GetParam());
  const auto sorted = Magnitudes(base, expert, {"a", "b", "c"});
  const int64_t n = static_cast<int64_t>(sorted.size());
  std::vector<SelectionQuery> queries;
  for (bool ties : {false, true}) {
    for (int64_t k : {int64_t{1}, int64_t{2}, n / 10, n / 2, n - 1, n})
      queries.push_back({0, k, ties});
  }
  auto results = selector.Select(domain, queries);
  ASSERT_TRUE(results.ok()) << results.status();
  for (size_t q = 0; q < queries.size(); ++q) {
    const float v = sorted[static_cast<size_t>(queries[q].k - 1)];
    const auto& r = (*results)[q];
    EXPECT_EQ(r.value, v) << "k=" << queries[q].k;
    EXPECT_EQ(r.count_greater, std::count_if(sorted.begin(), sorted.end(),
                                             [&](float x) { return x > v; }));
    EXPECT_EQ(r.count_equal, std::count(sorted.begin(), sorted.end(), v));
    auto per_chunk = selector.CountEqualPerChunk(domain, 0, v);
    ASSERT_TRUE(per_chunk.ok());
    int64_t total = 0;
    for (int64_t c : *per_chunk) total += c;
    EXPECT_EQ(total, r.count_equal);
    EXPECT_EQ(r.chunk_keep.empty(), !queries[q].ties_per_chunk);
    if (queries[q].ties_per_chunk) {
      ExpectKeepsFirstTies(r, queries[q].k - r.count_greater, *per_chunk);
    }
  }
}

// f32 task vectors whose magnitudes are exact powers of two (low 16 bits
// zero, many ties) and values with low bits set above them. A k-th entry
// among the former is exact from the first pass; one among the latter takes
// the second. Either way, a query that breaks ties gets them per chunk.
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
  std::unique_ptr<MergePlan> plan = PlanFor(dir, {{"a", {{n}, b, DType::kF32}}},
                                            {{"a", {{n}, e, DType::kF32}}});
  ASSERT_NE(plan, nullptr);
  const std::vector<const PlannedTensor*> domain = {&plan->tensors()[0]};
  ThreadPool pool(2);
  MagnitudeSelector selector(*plan, pool, 4096);
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
      EXPECT_EQ(got.from_first_pass, (bits & 0xffffu) == 0) << "k=" << k;
      if (ties) {
        auto per_chunk = selector.CountEqualPerChunk(domain, 0, v);
        ASSERT_TRUE(per_chunk.ok());
        ExpectKeepsFirstTies(got, k - got.count_greater, *per_chunk);
      }
    }
  }
}

// Over several tensors the first pass counts each tensor's ties, so the
// tensors before the one where the kept ties run out keep all of theirs
// (kAllTies) and those after none, without being read again; with
// ties_in_pass, that one is left to the caller's pass.
TEST(SelectorPassesTest, TiesOverSeveralTensorsAreCountedWhereTheyRunOut) {
  const std::string dir = TempDir("sel_tensors");
  // Every |τ| is 1 or 0.5: four tensors of 5000, a third of each at 1.
  testing::TestModel base, expert;
  std::vector<std::string> names;
  for (int t = 0; t < 4; ++t) {
    const std::string name = "t" + std::to_string(t);
    names.push_back(name);
    std::vector<float> e(5000);
    for (size_t i = 0; i < e.size(); ++i) {
      e[i] = static_cast<int>(i % 3) == t % 3 ? 1.f : -0.5f;
    }
    base[name] = {{5000}, std::vector<float>(5000, 0.f), DType::kF32};
    expert[name] = {{5000}, e, DType::kF32};
  }
  std::unique_ptr<MergePlan> plan = PlanFor(dir, base, expert);
  ASSERT_NE(plan, nullptr);
  std::vector<const PlannedTensor*> domain;
  for (const auto& t : plan->tensors()) domain.push_back(&t);
  ThreadPool pool(2);
  MagnitudeSelector selector(*plan, pool, 1024);
  const int64_t ones = 3 * 1667 + 1666;  // t2 has 1666
  for (int64_t k : {ones + 100, ones + 9000, int64_t{500}, int64_t{4000}}) {
    auto r = selector.Select(domain, {{0, k, true}});
    ASSERT_TRUE(r.ok()) << r.status();
    const SelectionResult& got = (*r)[0];
    const float v = k <= ones ? 1.f : 0.5f;
    EXPECT_EQ(got.value, v) << "k=" << k;
    EXPECT_TRUE(got.from_first_pass);
    auto per_chunk = selector.CountEqualPerChunk(domain, 0, v);
    ASSERT_TRUE(per_chunk.ok());
    ExpectKeepsFirstTies(got, k - got.count_greater, *per_chunk);
    // The tensors wholly before the one where the kept ties run out are
    // marked, not counted (5 chunks a tensor).
    int64_t before = 0, cut = 0;
    for (; cut < 3; ++cut) {
      int64_t e = 0;
      for (int c = 0; c < 5; ++c) e += (*per_chunk)[cut * 5 + c];
      if (before + e >= k - got.count_greater) break;
      before += e;
    }
    const auto first_counted =
        std::find_if(got.chunk_keep.begin(), got.chunk_keep.end(),
                     [](int64_t c) { return c != kAllTies; });
    EXPECT_EQ(first_counted - got.chunk_keep.begin(), cut * 5) << "k=" << k;
    EXPECT_GT(cut, k == 500 || k == ones + 100 ? -1 : 1) << "k=" << k;

    // With ties_in_pass the tensor where they run out is left to the
    // caller: its chunks are kCountInPass and tensor_keep is what they
    // keep together; every other chunk is as above.
    auto in_pass = selector.Select(domain, {{0, k, true, true}});
    ASSERT_TRUE(in_pass.ok()) << in_pass.status();
    const SelectionResult& lazy = (*in_pass)[0];
    EXPECT_EQ(lazy.value, got.value);
    ASSERT_EQ(lazy.chunk_keep.size(), got.chunk_keep.size());
    int64_t in_tensor = 0;
    for (size_t c = 0; c < got.chunk_keep.size(); ++c) {
      if (static_cast<int64_t>(c) / 5 == cut) {
        EXPECT_EQ(lazy.chunk_keep[c], kCountInPass) << "k=" << k << " c=" << c;
        in_tensor += got.chunk_keep[c];
      } else {
        EXPECT_EQ(lazy.chunk_keep[c], got.chunk_keep[c])
            << "k=" << k << " c=" << c;
      }
    }
    EXPECT_EQ(lazy.tensor_keep, in_tensor) << "k=" << k;
    EXPECT_GT(lazy.tensor_keep, 0) << "k=" << k;
  }
}

// Each tensor's counts are kept sparse: |τ| from exact zeros up to 1 spans
// some 16,000 top-16-bit values per tensor, and 300 such tensors kept
// densely would pass the bound on kept counts, so every tensor would be read
// again to count its ties.
TEST(SelectorPassesTest, ManyTensorsWithZerosStillLocateTheTieTensor) {
  const std::string dir = TempDir("sel_many");
  testing::TestModel base, expert;
  const std::vector<float> tau = {1, 0, 1, 0.5f, 0, -1, 0.25f, 0};
  for (int t = 0; t < 300; ++t) {
    char name[8];
    std::snprintf(name, sizeof(name), "t%03d", t);
    base[name] = {{8}, std::vector<float>(8, 0.f)};
    expert[name] = {{8}, tau};
  }
  std::unique_ptr<MergePlan> plan = PlanFor(dir, base, expert);
  ASSERT_NE(plan, nullptr);
  std::vector<const PlannedTensor*> domain;
  for (const auto& t : plan->tensors()) domain.push_back(&t);
  ASSERT_EQ(domain.size(), 300u);
  ThreadPool pool(2);
  MagnitudeSelector selector(*plan, pool, 1024);
  // Three entries of |τ| = 1 per tensor: the kept ones run out in t150.
  auto r = selector.Select(domain, {{0, 3 * 150 + 2, true, true}});
  ASSERT_TRUE(r.ok()) << r.status();
  const SelectionResult& got = (*r)[0];
  EXPECT_EQ(got.value, 1.f);
  ASSERT_EQ(got.chunk_keep.size(), 300u);  // one chunk per tensor
  for (size_t c = 0; c < 300; ++c) {
    const int64_t want = c < 150 ? kAllTies : (c == 150 ? kCountInPass : 0);
    EXPECT_EQ(got.chunk_keep[c], want) << "tensor " << c;
  }
  EXPECT_EQ(got.tensor_keep, 2);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, SelectorTest,
                         ::testing::Values(16, 4096, 1 << 14));

}  // namespace
}  // namespace mergeserve
