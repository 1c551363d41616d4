#include "methods/rank_sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mergeserve/format/dtype.h"
#include "test_util.h"

namespace mergeserve {
namespace {

// torch.sort(stable=True) of |x|, scattered back: the ranks DELLA uses.
std::vector<uint32_t> StableRanks(const std::vector<float>& x) {
  std::vector<uint32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return std::fabs(x[a]) < std::fabs(x[b]);
  });
  std::vector<uint32_t> rank(x.size());
  for (size_t i = 0; i < order.size(); ++i) rank[order[i]] = uint32_t(i);
  return rank;
}

// Rows of every shape the ranking treats differently.
std::vector<std::pair<std::string, std::vector<float>>> Rows(std::mt19937& rng,
                                                             size_t n) {
  std::normal_distribution<float> normal(0.f, 0.01f);
  std::vector<std::pair<std::string, std::vector<float>>> rows;
  // Rounded to bf16: the low 16 bits zero, as in bf16 deltas.
  auto bf16 = [](float v) { return Bf16ToF32(F32ToBf16(v)); };
  std::vector<float> x(n);
  for (auto& v : x) v = bf16(normal(rng));
  rows.emplace_back("bf16", x);
  // A tenth with low bits set: sorted within their buckets, a few per
  // bucket (insertion) and one bucket of many (a general sort).
  for (size_t j = 0; j < n; ++j) {
    if (j % 10 == 0) x[j] = 0.01f + 1e-9f * static_cast<float>(j % 7);
    if (j % 50 == 3) x[j] = -(0.02f + 1e-9f * static_cast<float>(j % 3));
  }
  rows.emplace_back("bf16_with_low_bits", x);
  // A fifth with low bits set (under the bucket pass's quarter), crowded
  // into one bucket: too many of its draws undecided to count one by one,
  // so the row is ranked whole.
  for (size_t j = 0; j < n; j += 5) {
    x[j] = 0.01f + 1e-9f * static_cast<float>(j % 13);
  }
  rows.emplace_back("crowded_low_bits", x);
  // Many exact zeros and repeated values of both signs: ties by index.
  for (size_t j = 0; j < n; ++j) {
    x[j] = j % 3 == 0 ? 0.f : (j % 2 == 0 ? 0.5f : -0.5f) * (j % 5 == 0);
  }
  rows.emplace_back("ties_and_zeros", x);
  // One value throughout: one bucket holds the row.
  rows.emplace_back("constant", std::vector<float>(n, -0.125f));
  // Magnitudes over 120 binades: more buckets than the counting passes
  // take, so the row is ranked by the general sort.
  for (size_t j = 0; j < n; ++j) {
    x[j] = std::ldexp(j % 2 == 0 ? 1.f : -1.5f, -static_cast<int>(j % 120));
  }
  rows.emplace_back("wide_span", x);
  // fp32 deltas: mostly low bits set, ranked by the general sort.
  for (auto& v : x) v = normal(rng);
  rows.emplace_back("fp32", x);
  return rows;
}

TEST(RankSamplingTest, RowRanksAreTheStableSortsRanks) {
  testing::ForEachKernelSet([](KernelSet) {
    std::mt19937 rng(3);
    RankScratch scratch;  // reused across rows, as a worker does
    for (size_t n :
         {size_t{1}, size_t{2}, size_t{33}, size_t{1024}, size_t{5001}}) {
      for (const auto& [name, x] : Rows(rng, n)) {
        std::vector<uint32_t> rank(n);
        RowRanks(x.data(), static_cast<int64_t>(n), scratch, rank.data());
        EXPECT_EQ(rank, StableRanks(x)) << name << " n " << n;
      }
    }
  });
}

// Marks from the exact ranks, as the ATen path computes them.
std::vector<float> ReferenceMarks(const std::vector<float>& x,
                                  const std::vector<float>& u, int64_t cols,
                                  double density, double eps, bool inverse) {
  std::vector<float> mark(x.size());
  const float span = static_cast<float>(cols - 1);
  const float width = static_cast<float>(2 * eps);
  const float low = static_cast<float>(density - eps);
  for (size_t r = 0; r < x.size(); r += static_cast<size_t>(cols)) {
    const std::vector<float> row(x.begin() + static_cast<int64_t>(r),
                                 x.begin() + static_cast<int64_t>(r) + cols);
    const std::vector<uint32_t> rank = StableRanks(row);
    for (int64_t j = 0; j < cols; ++j) {
      const float p =
          cols > 1 ? (static_cast<float>(rank[static_cast<size_t>(j)]) / span) *
                             width +
                         low
                   : static_cast<float>(density);
      const size_t i = r + static_cast<size_t>(j);
      mark[i] = u[i] < p ? (inverse ? 1.f / p : 1.f) : 0.f;
    }
  }
  return mark;
}

// Without 1/p the keep decisions come from bucket bounds, and only draws
// between a bucket's first and last p are ranked exactly: the marks must be
// those of the exact ranks anyway, in rows where nearly every draw is
// undecided (one bucket) and in rows where few are.
TEST(RankSamplingTest, MarksEqualThoseOfTheExactRanks) {
  testing::ForEachKernelSet([](KernelSet) {
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> uniform(0.f, 1.f);
    RankScratch scratch;
    int64_t kept = 0, dropped = 0;
    // Odd and non-multiple-of-16 lengths reach the kernels' scalar tails.
    for (int64_t cols : {int64_t{1}, int64_t{2}, int64_t{33}, int64_t{64},
                         int64_t{1000}, int64_t{1024}}) {
      for (const auto& [name, row] : Rows(rng, static_cast<size_t>(cols))) {
        // Three rows per chunk, the same row shape with its own draws.
        std::vector<float> x;
        for (int r = 0; r < 3; ++r) x.insert(x.end(), row.begin(), row.end());
        std::vector<float> u(x.size());
        for (auto& v : u) v = uniform(rng);
        for (const auto& [density, eps] :
             {std::pair{0.2, 0.15}, std::pair{0.5, 0.5},
              std::pair{0.9, 0.05}}) {
          for (bool inverse : {false, true}) {
            std::vector<float> mark(x.size(), -1.f);
            MarkRankSampled(x.data(), u.data(), static_cast<int64_t>(x.size()),
                            cols, density, eps, inverse, scratch, mark.data());
            EXPECT_EQ(mark, ReferenceMarks(x, u, cols, density, eps, inverse))
                << name << " cols " << cols << " density " << density
                << " inverse " << inverse;
            for (float m : mark) (m != 0 ? kept : dropped) += 1;
          }
        }
      }
    }
    EXPECT_GT(kept, 1000);
    EXPECT_GT(dropped, 1000);
  });
}

}  // namespace
}  // namespace mergeserve
