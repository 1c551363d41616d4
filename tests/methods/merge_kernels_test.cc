#include "methods/merge_kernels.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "methods/abs_sum.h"
#include "methods/task_vector_merge.h"
#include "methods/tie_ledger.h"

namespace mergeserve {
namespace {

const std::function<bool()> kNever = [] { return false; };

// Exact keep: entries above the value always, and of those equal to it the
// first `allow` in index order, whichever sign they have.
TEST(MergeKernelsTest, MarkTopSetKeepsTheFirstTiesOfAChunk) {
  const std::vector<float> tv = {0.5f, -0.25f, 0.25f, 0.1f, -0.25f, 0.25f};
  std::vector<float> mark(tv.size(), -1.f);
  TopSet set;
  set.kind = TopSet::kThreshold;
  set.value = 0.25f;
  set.all_ties = false;
  set.chunk_ties = {0, 2};  // chunk 1: two of its four ties
  MarkTopSet(set, 1, tv.data(), 6, mark.data(), nullptr, kNever);
  EXPECT_EQ(mark, (std::vector<float>{1, 1, 1, 0, 0, 0}));
  MarkTopSet(set, 0, tv.data(), 6, mark.data(), nullptr, kNever);
  EXPECT_EQ(mark, (std::vector<float>{1, 0, 0, 0, 0, 0}));
  set.all_ties = true;
  MarkTopSet(set, 0, tv.data(), 6, mark.data(), nullptr, kNever);
  EXPECT_EQ(mark, (std::vector<float>{1, 1, 1, 0, 1, 1}));
  // Counted in the pass: the ledger hands out what the chunks before left.
  set.all_ties = false;
  set.ties_in_pass = true;
  set.chunk_ties.clear();
  TieLedger ledger(2, 3);  // three ties kept over both chunks
  MarkTopSet(set, 0, tv.data(), 6, mark.data(), &ledger, kNever);  // 3 of 4
  EXPECT_EQ(mark, (std::vector<float>{1, 1, 1, 0, 1, 0}));
  MarkTopSet(set, 1, tv.data(), 6, mark.data(), &ledger, kNever);  // none left
  EXPECT_EQ(mark, (std::vector<float>{1, 0, 0, 0, 0, 0}));
  set.kind = TopSet::kNone;
  MarkTopSet(set, 0, tv.data(), 6, mark.data(), nullptr, kNever);
  EXPECT_EQ(mark, std::vector<float>(6, 0.f));
  set.kind = TopSet::kAll;
  MarkTopSet(set, 0, tv.data(), 6, mark.data(), nullptr, kNever);
  EXPECT_EQ(mark, std::vector<float>(6, 1.f));
}

// The election: votes of ±1 (0 for zero entries), a tie takes the given
// sign, and only entries agreeing with the winner reach the mean.
TEST(MergeKernelsTest, ElectionAndDisjointMean) {
  const std::vector<float> a = {0.5f, -0.5f, 0.f, 0.2f, -0.1f};
  const std::vector<float> b = {0.3f, 0.4f, 0.f, -0.2f, -0.3f};
  std::vector<float> votes(5, 0.f);
  AddSigns(votes.data(), a.data(), 1.f, 5);
  AddSigns(votes.data(), b.data(), 1.f, 5);
  EXPECT_EQ(votes, (std::vector<float>{2, 0, 0, 0, -2}));
  EXPECT_EQ(SignBalance(votes.data(), 5), 0);
  ElectSign(votes.data(), -1.f, 5);
  EXPECT_EQ(votes, (std::vector<float>{1, -1, -1, -1, -1}));
  std::vector<float> acc(5, 0.f), den(5, 0.f), q(5);
  AddAgreeing(acc.data(), den.data(), a.data(), votes.data(), 1.f, 2.f, 2.f, 5);
  AddAgreeing(acc.data(), den.data(), b.data(), votes.data(), 1.f, 1.f, 1.f, 5);
  EXPECT_EQ(den, (std::vector<float>{3, 2, 0, 1, 3}));
  QuotientByWeight(q.data(), acc.data(), den.data(), 5);
  EXPECT_FLOAT_EQ(q[0], (2 * 0.5f + 0.3f) / 3);
  EXPECT_FLOAT_EQ(q[1], -0.5f);
  EXPECT_EQ(q[2], 0.f);  // no agreeing entry: 0, not NaN
  EXPECT_FLOAT_EQ(q[3], -0.2f);
  QuotientByCount(q.data(), acc.data(), den.data(), 5);
  EXPECT_EQ(q[2], 0.f);
  std::vector<float> base = {1, 1, 1, 1, 1}, out(5);
  ApplyLambda(out.data(), base.data(), q.data(), 0.5f, 5);
  EXPECT_FLOAT_EQ(out[1], 1.f - 0.25f);
}

// The fused election and merge writes what the kernels it replaces write,
// bit for bit: sum or sign consensus, every quotient, tied votes (the tie
// sign decides), zeros, -0, lengths around the 16-lane step.
TEST(MergeKernelsTest, ElectAndMergeEqualsTheKernelsItFuses) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pick(0, 9);
  std::normal_distribution<float> normal(0.f, 1e-3f);
  for (int64_t m : {1, 15, 16, 17, 40, 1000}) {
    for (int n : {1, 2, 4, 10}) {  // 10: more experts than keep their votes
      std::vector<std::vector<float>> tv(static_cast<size_t>(n));
      for (auto& x : tv) {
        x.resize(static_cast<size_t>(m));
        for (float& v : x) {
          const int c = pick(rng);
          // Equal magnitudes of opposite signs make tied votes.
          v = c < 3    ? 0.f
              : c == 3 ? -0.f
              : c < 6  ? (c == 4 ? 0.25f : -0.25f)
                       : normal(rng);
        }
      }
      std::vector<const float*> tvs;
      for (const auto& x : tv) tvs.push_back(x.data());
      for (bool sign_weighted : {false, true}) {
        std::vector<float> ew, w, d;
        for (int k = 0; k < n; ++k) {
          w.push_back(0.5f + 0.3f * static_cast<float>(k));
          ew.push_back(sign_weighted || k % 2 == 0 ? w.back() : 1.f);
          d.push_back(k == 1 ? 1.f : w.back());
        }
        for (bool count_signs : {false, true}) {
          for (float tie : {1.f, -1.f}) {
            for (QuotientKind kind :
                 {QuotientKind::kNone, QuotientKind::kByWeight,
                  QuotientKind::kByCount}) {
              std::vector<float> votes(static_cast<size_t>(m), 0.f);
              for (int k = 0; k < n; ++k) {
                if (count_signs) {
                  AddSigns(votes.data(), tvs[k], ew[k], m);
                } else {
                  AddScaled(votes.data(), tvs[k], ew[k], m);
                }
              }
              ElectSign(votes.data(), tie, m);
              std::vector<float> acc(votes.size(), 0.f), den(votes.size(), 0.f);
              for (int k = 0; k < n; ++k) {
                AddAgreeing(acc.data(), den.data(), tvs[k], votes.data(), ew[k],
                            w[k], d[k], m);
              }
              std::vector<float> want(votes.size()), got(votes.size(), 9.f);
              if (kind == QuotientKind::kNone) {
                Quotient(want.data(), acc.data(), 1.f, m);
              } else if (kind == QuotientKind::kByWeight) {
                QuotientByWeight(want.data(), acc.data(), den.data(), m);
              } else {
                QuotientByCount(want.data(), acc.data(), den.data(), m);
              }
              ElectAndMerge(tvs.data(), n, ew.data(), w.data(), d.data(),
                            count_signs, tie, kind, got.data(), m);
              for (size_t j = 0; j < want.size(); ++j) {
                uint32_t a, b;
                std::memcpy(&a, &want[j], 4);
                std::memcpy(&b, &got[j], 4);
                ASSERT_EQ(a, b) << "m " << m << " n " << n << " j " << j
                                << " signs " << count_signs << " tie " << tie
                                << " kind " << static_cast<int>(kind)
                                << " sign-weighted " << sign_weighted;
              }
            }
          }
        }
      }
    }
  }
}

// Kept marks to bits and back, at every length around a word and a half
// word; a dropped negative entry stays -0 (a multiply, as the float mask).
TEST(MergeKernelsTest, KeptBitsRoundTrip) {
  std::mt19937 rng(1);
  for (int64_t n : {1, 31, 32, 33, 63, 64, 65, 100, 1000}) {
    std::vector<float> mark(static_cast<size_t>(n)), tv(mark.size());
    for (size_t j = 0; j < mark.size(); ++j) {
      mark[j] = rng() % 3 == 0 ? 0.f : 1.f;
      // Every other length: magnitudes 2^60 apart with all mantissa bits,
      // whose L1 sums round (MaskAndNorms' in-order loop, not its lanes).
      tv[j] = n % 2 == 0 ? -1.f - static_cast<float>(j)
                         : -std::ldexp(1.f + std::ldexp(float(j % 97), -23),
                                       j % 2 == 0 ? 20 : -40);
    }
    std::vector<uint64_t> bits(static_cast<size_t>((n + 63) / 64), ~0ull);
    BitsFromMark(mark.data(), n, bits.data());
    std::vector<float> masked = tv, want = tv;
    MaskByBits(masked.data(), bits.data(), n);
    for (size_t j = 0; j < want.size(); ++j) want[j] *= mark[j];
    for (size_t j = 0; j < want.size(); ++j) {
      ASSERT_EQ(masked[j], want[j]) << n << " " << j;
      ASSERT_EQ(std::signbit(masked[j]), std::signbit(want[j]))
          << n << " " << j;
    }
    std::vector<float> t2 = tv;
    double all = 0, kept = 0;
    MaskAndNorms(t2.data(), mark.data(), n, &all, &kept);
    EXPECT_EQ(t2, want);
    double a = 0, k = 0;
    for (size_t j = 0; j < tv.size(); ++j) {
      a += std::fabs(tv[j]);
      k += std::fabs(want[j]);
    }
    EXPECT_EQ(all, a);
    EXPECT_EQ(kept, k);
  }
}

// An exact unmasked sum proves the masked one exact only for marks of 0 and
// 1: marks of 1/p give values whose sum rounds, and it must round in index
// order. Big and small values alternate, so sixteen lanes (the exact
// path's order) would group them and round otherwise; the test checks that
// they would, so that it tells the two orders apart.
TEST(MergeKernelsTest, MaskAndNormsSumsRescaledValuesInIndexOrder) {
  for (int64_t n : {1000, 4096}) {
    std::vector<float> tv(static_cast<size_t>(n)), mark(tv.size());
    for (size_t j = 0; j < tv.size(); ++j) {
      tv[j] = j % 2 == 0 ? std::ldexp(1.f, 28) : 1.f;
      mark[j] = j % 5 == 4 ? 0.f : 1.f / 0.3f;
    }
    ASSERT_TRUE(AbsSumIsExact(tv.data(), n)) << n;  // the path under test
    std::vector<float> t = tv;
    double all = 0, kept = 0;
    MaskAndNorms(t.data(), mark.data(), n, &all, &kept);
    double a = 0, k = 0, lane[16] = {};
    for (size_t j = 0; j < tv.size(); ++j) {
      a += std::fabs(tv[j]);
      k += std::fabs(tv[j] * mark[j]);
      lane[j % 16] += std::fabs(tv[j] * mark[j]);
    }
    double in_lanes = 0;
    for (double v : lane) in_lanes += v;
    ASSERT_NE(in_lanes, k) << n;
    EXPECT_EQ(all, a) << n;
    EXPECT_EQ(kept, k) << n;
  }
}

TEST(MergeKernelsTest, TrimBelowKeepsTheThresholdItself) {
  std::vector<float> x = {0.1f, -0.2f, 0.3f, -0.3f, 0.29f};
  TrimBelow(x.data(), 0.3f, 5);
  EXPECT_EQ(x, (std::vector<float>{0, 0, 0.3f, -0.3f, 0}));
}

}  // namespace
}  // namespace mergeserve
