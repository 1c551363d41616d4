#include "methods/abs_sum.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {
namespace {

double SerialAbsSum(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += std::fabs(v);
  return s;
}

double ReverseAbsSum(const std::vector<float>& x) {
  double s = 0;
  for (size_t j = x.size(); j-- > 0;) s += std::fabs(x[j]);
  return s;
}

// Differences of bf16 weights, the L1 rescaling's usual input: provably
// exact, and the sum is the index-order one.
TEST(AbsSumTest, Bf16DeltasSumExactlyInAnyOrder) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 0.02f);
  auto bf16 = [](float v) { return Bf16ToF32(F32ToBf16(v)); };
  std::vector<float> x(16384 + 5);
  for (auto& v : x) {
    const float base = bf16(normal(rng));
    v = bf16(base + normal(rng) * 0.05f) - base;
  }
  ASSERT_TRUE(AbsSumIsExact(x.data(), static_cast<int64_t>(x.size())));
  EXPECT_EQ(IndexOrderAbsSum(x.data(), static_cast<int64_t>(x.size())),
            SerialAbsSum(x));
}

// One large value among many tiny ones with all mantissa bits: the order
// changes the sum, so it must be summed in index order.
TEST(AbsSumTest, SumsThatRoundStayInIndexOrder) {
  std::vector<float> x(4096);
  for (size_t j = 0; j < x.size(); ++j) {
    x[j] = std::ldexp(1.f + std::ldexp(float(j % 97), -23), -45);
  }
  x[0] = 1.f;
  ASSERT_NE(SerialAbsSum(x), ReverseAbsSum(x));  // the input has teeth
  EXPECT_FALSE(AbsSumIsExact(x.data(), static_cast<int64_t>(x.size())));
  EXPECT_EQ(IndexOrderAbsSum(x.data(), static_cast<int64_t>(x.size())),
            SerialAbsSum(x));
}

// Wherever the condition holds, another order gives the same bits; both
// outcomes occur over inputs that straddle it.
TEST(AbsSumTest, ExactnessIsNeverClaimedWrongly) {
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> exponent(-60, 10), size(1, 3000);
  std::uniform_int_distribution<uint32_t> bits(0, 0x7fffff);
  int exact = 0, inexact = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int lo = exponent(rng), span = trial % 40;
    std::vector<float> x(static_cast<size_t>(size(rng)));
    for (auto& v : x) {
      uint32_t mantissa = bits(rng);
      if (trial % 2 == 0) mantissa &= 0x7f0000u;  // bf16-like
      v = std::ldexp(1.f + std::ldexp(float(mantissa), -23),
                     lo + static_cast<int>(rng() % (span + 1)));
      if (rng() % 4 == 0) v = -v;
      if (rng() % 9 == 0) v = 0.f;
    }
    const int64_t n = static_cast<int64_t>(x.size());
    EXPECT_EQ(IndexOrderAbsSum(x.data(), n), SerialAbsSum(x)) << trial;
    if (AbsSumIsExact(x.data(), n)) {
      ++exact;
      EXPECT_EQ(ReverseAbsSum(x), SerialAbsSum(x)) << trial;
    } else {
      ++inexact;
    }
  }
  EXPECT_GT(exact, 50);
  EXPECT_GT(inexact, 50);
}

// Half the entries large, half tiny with every mantissa bit set: the sum
// starts to round once the gap between them passes about 24 binades. The
// condition must hold until nearly there (it is sufficient, not loose) and
// never past it.
TEST(AbsSumTest, HoldsUntilNearlyTheFirstGapThatRounds) {
  const float tiny = std::ldexp(2.f - std::ldexp(1.f, -23), -10);
  int last_exact = -1, first_rounding = -1;
  for (int gap = 10; gap <= 40; ++gap) {
    std::vector<float> x(64);
    for (size_t j = 0; j < x.size(); ++j) {
      x[j] = j % 2 == 0 ? std::ldexp(1.5f, gap - 10) : tiny;
    }
    const int64_t n = static_cast<int64_t>(x.size());
    EXPECT_EQ(IndexOrderAbsSum(x.data(), n), SerialAbsSum(x)) << gap;
    if (first_rounding < 0 && ReverseAbsSum(x) != SerialAbsSum(x)) {
      first_rounding = gap;
    }
    if (AbsSumIsExact(x.data(), n)) {
      last_exact = gap;
      EXPECT_EQ(ReverseAbsSum(x), SerialAbsSum(x)) << gap;
    }
  }
  ASSERT_GT(first_rounding, 0);
  EXPECT_LT(last_exact, first_rounding);
  EXPECT_GE(last_exact, first_rounding - 3);
}

TEST(AbsSumTest, EmptyAndZeroAndNonFinite) {
  EXPECT_EQ(IndexOrderAbsSum(nullptr, 0), 0.0);
  std::vector<float> zeros(100, -0.f);
  EXPECT_TRUE(AbsSumIsExact(zeros.data(), 100));
  EXPECT_EQ(IndexOrderAbsSum(zeros.data(), 100), 0.0);
  std::vector<float> inf = {1.f, INFINITY};
  EXPECT_FALSE(AbsSumIsExact(inf.data(), 2));
  EXPECT_EQ(IndexOrderAbsSum(inf.data(), 2), INFINITY);
}

}  // namespace
}  // namespace mergeserve
