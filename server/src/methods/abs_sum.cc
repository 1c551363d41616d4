#include "methods/abs_sum.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mergeserve/base/cpu_dispatch.h"

namespace mergeserve {
// Whether summing |x| into a double makes no rounding error, whatever the
// order. Every |x[j]| is a multiple of 2^q, q the lowest bit its exponent
// and mantissa allow (a float whose low 16 bits are zero, as bf16 deltas
// mostly are, has 7 mantissa bits; subnormals count as 2^-150), and every
// partial sum is at most n·2^(emax+1). If that is at most 2^(q+53), each
// partial sum is an integer multiple of 2^q below 2^53 of them: a double
// holds it exactly, so any order gives the index-order sum bit for bit.
// Held for every chunk of the benchmark's bf16 models.
MS_CPU_DISPATCH bool AbsSumIsExact(const float* __restrict x, int64_t n) {
  // Unsigned and branchless, so that it vectorises: `low` is the lowest
  // bit's biased exponent plus 23, all ones for a zero.
  uint32_t lsb = ~0u, emax = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t k;
    std::memcpy(&k, &x[j], 4);
    k &= 0x7fffffffu;
    const uint32_t e = k >> 23;
    const uint32_t low =
        (e + ((k & 0xffffu) == 0) * 16u) | (0u - static_cast<uint32_t>(k == 0));
    lsb = std::min(lsb, low);
    emax = std::max(emax, e);
  }
  if (lsb == ~0u) return true;     // all zero
  if (emax == 0xff) return false;  // inf or NaN
  int64_t log2n = 0;
  while ((int64_t{1} << log2n) < n) ++log2n;
  // n·2^(emax-126) <= 2^(lsb-23-127+53), in biased exponents.
  return log2n + emax + 1 + 23 <= int64_t{lsb} + 53;
}

MS_CPU_DISPATCH double AbsSumInLanes(const float* __restrict x, int64_t n) {
  double lane[16] = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int i = 0; i < 16; ++i) lane[i] += std::fabs(x[j + i]);
  }
  double s = 0;
  for (; j < n; ++j) s += std::fabs(x[j]);
  for (double v : lane) s += v;
  return s;
}

double IndexOrderAbsSum(const float* x, int64_t n) {
  if (AbsSumIsExact(x, n)) return AbsSumInLanes(x, n);
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::fabs(x[j]);
  return s;
}

}  // namespace mergeserve
