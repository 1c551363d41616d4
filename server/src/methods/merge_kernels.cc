#include "methods/merge_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "mergeserve/base/cpu_dispatch.h"
#include "methods/abs_sum.h"
#include "methods/task_vector_merge.h"
#include "methods/tie_ledger.h"

namespace mergeserve {

MS_CPU_DISPATCH void MarkTopSet(const TopSet& set, int64_t ci,
                                const float* __restrict tv, int64_t n,
                                float* __restrict mark, TieLedger* ledger,
                                const std::function<bool()>& abandon) {
  switch (set.kind) {
    case TopSet::kNone:
      std::fill(mark, mark + n, 0.f);
      return;
    case TopSet::kAll:
      std::fill(mark, mark + n, 1.f);
      return;
    case TopSet::kThreshold:
      break;
  }
  const float v = set.value;
  int64_t equal = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float a = std::fabs(tv[j]);
    mark[j] = a > v ? 1.f : 0.f;
    equal += a == v;
  }
  int64_t allow = equal;
  if (!set.all_ties && set.ties_in_pass) {
    allow = ledger->Allow(ci, equal, abandon);
    if (allow < 0) return;  // the pass failed elsewhere
  } else if (!set.all_ties) {
    allow = set.chunk_ties[static_cast<size_t>(ci)];
  }
  if (allow >= equal) {
    for (int64_t j = 0; j < n; ++j)
      mark[j] += std::fabs(tv[j]) == v ? 1.f : 0.f;
    return;
  }
  // Keep only the first `allow` ties of this chunk (lower index first).
  int64_t left = allow;
  for (int64_t j = 0; j < n && left > 0; ++j) {
    if (std::fabs(tv[j]) == v) {
      mark[j] = 1.f;
      --left;
    }
  }
}

MS_CPU_DISPATCH void AddScaled(float* __restrict acc, const float* __restrict x,
                               float w, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += w * x[j];
}

MS_CPU_DISPATCH void AddSigns(float* __restrict acc, const float* __restrict x,
                              float w, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float e = w * x[j];
    acc[j] += (e > 0 ? 1.f : 0.f) - (e < 0 ? 1.f : 0.f);
  }
}

MS_CPU_DISPATCH int64_t SignBalance(const float* __restrict votes, int64_t n) {
  int64_t bal = 0;
  for (int64_t j = 0; j < n; ++j) bal += (votes[j] > 0) - (votes[j] < 0);
  return bal;
}

MS_CPU_DISPATCH void ElectSign(float* __restrict votes, float tie, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float v = votes[j];
    votes[j] = v > 0 ? 1.f : (v < 0 ? -1.f : tie);
  }
}

MS_CPU_DISPATCH void AddAgreeing(float* __restrict acc, float* __restrict den,
                                 const float* __restrict u,
                                 const float* __restrict sign, float ew,
                                 float w, float d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float agree = ew * u[j] * sign[j] > 0 ? 1.f : 0.f;
    acc[j] += agree * (w * u[j]);
    den[j] += agree * d;
  }
}

namespace {

// Sixteen floats in GCC's generic vectors: one AVX-512 register, two AVX2
// or four SSE ones in the clones, element-wise IEEE operations either way.
typedef float V16 __attribute__((vector_size(64)));

// One element of ElectAndMerge, for the tail.
inline float ElectAndMergeOne(const float* const* tv, int n, int64_t j,
                              const float* ew, const float* w, const float* d,
                              bool count_signs, float tie,
                              QuotientKind quotient) {
  float vote = 0;
  for (int k = 0; k < n; ++k) {
    const float v = ew[k] * tv[k][j];
    vote += count_signs ? (v > 0 ? 1.f : 0.f) - (v < 0 ? 1.f : 0.f) : v;
  }
  vote = vote > 0 ? 1.f : (vote < 0 ? -1.f : tie);
  float acc = 0, den = 0;
  for (int k = 0; k < n; ++k) {
    const float u = tv[k][j];
    const float agree = ew[k] * u * vote > 0 ? 1.f : 0.f;
    acc += agree * (w[k] * u);
    den += agree * d[k];
  }
  switch (quotient) {
    case QuotientKind::kNone:
      return acc;
    case QuotientKind::kByWeight:
      return acc / (den == 0 ? 1.f : den);
    case QuotientKind::kByCount:
      break;
  }
  return acc / std::max(den, 1.f);
}

}  // namespace

namespace {

// ElectAndMerge's 16-lane loop. Up to kKeep experts keep their votes
// e_k = ew·u from the election for the merge (one load and multiply fewer
// each), and with kSameWeights (ew equal to w, the sign-weighted election)
// w·u is e_k too: the same products, so the same bits.
constexpr int kKeep = 8;
template <bool kSameWeights>
inline __attribute__((always_inline)) int64_t ElectAndMerge16(
    const float* const* tv, int n, const float* ew, const float* w,
    const float* d, bool count_signs, float tie, QuotientKind quotient,
    float* __restrict q, int64_t m) {
  const V16 zero = {}, one = zero + 1.f, minus_one = zero - 1.f;
  const V16 tied = zero + tie;
  int64_t j = 0;
  for (; j + 16 <= m; j += 16) {
    V16 e[kKeep];
    V16 vote = zero;
    for (int k = 0; k < n; ++k) {
      V16 x;
      std::memcpy(&x, tv[k] + j, sizeof x);
      const V16 v = ew[k] * x;
      if (k < kKeep) e[k] = v;
      vote += count_signs ? (v > 0 ? one : zero) - (v < 0 ? one : zero) : v;
    }
    vote = vote > 0 ? one : (vote < 0 ? minus_one : tied);
    V16 acc = zero, den = zero;
    for (int k = 0; k < n; ++k) {
      V16 ek, wu;
      if (k < kKeep && kSameWeights) {
        ek = wu = e[k];
      } else {
        V16 u;
        std::memcpy(&u, tv[k] + j, sizeof u);
        ek = k < kKeep ? e[k] : ew[k] * u;
        wu = w[k] * u;
      }
      const V16 agree = ek * vote > 0 ? one : zero;
      acc += agree * wu;
      den += agree * d[k];
    }
    V16 out = acc;  // QuotientKind::kNone
    switch (quotient) {
      case QuotientKind::kNone:
        break;
      case QuotientKind::kByWeight:
        out = acc / (den == 0 ? one : den);
        break;
      case QuotientKind::kByCount:
        out = acc / (den < one ? one : den);  // std::max(den, 1.f)
        break;
    }
    std::memcpy(q + j, &out, sizeof out);
  }
  return j;
}

}  // namespace

MS_CPU_DISPATCH void ElectAndMerge(const float* const* tv, int n,
                                   const float* ew, const float* w,
                                   const float* d, bool count_signs, float tie,
                                   QuotientKind quotient, float* __restrict q,
                                   int64_t m) {
  bool same = true;  // bitwise: w·u is then ew·u exactly
  for (int k = 0; k < n; ++k) {
    same = same && std::memcmp(&ew[k], &w[k], sizeof(float)) == 0;
  }
  int64_t j = same ? ElectAndMerge16<true>(tv, n, ew, w, d, count_signs, tie,
                                           quotient, q, m)
                   : ElectAndMerge16<false>(tv, n, ew, w, d, count_signs, tie,
                                            quotient, q, m);
  for (; j < m; ++j) {
    q[j] = ElectAndMergeOne(tv, n, j, ew, w, d, count_signs, tie, quotient);
  }
}

void Quotient(float* __restrict q, const float* __restrict acc, float scale,
              int64_t n) {
  if (scale == 1.f) {
    std::copy(acc, acc + n, q);
  } else {
    for (int64_t j = 0; j < n; ++j) q[j] = acc[j] * scale;
  }
}

MS_CPU_DISPATCH void QuotientDivided(float* __restrict q,
                                     const float* __restrict acc, float divisor,
                                     int64_t n) {
  for (int64_t j = 0; j < n; ++j) q[j] = acc[j] / divisor;
}

MS_CPU_DISPATCH void QuotientByWeight(float* __restrict q,
                                      const float* __restrict acc,
                                      const float* __restrict den, int64_t n) {
  for (int64_t j = 0; j < n; ++j) q[j] = acc[j] / (den[j] == 0 ? 1.f : den[j]);
}

MS_CPU_DISPATCH void QuotientByCount(float* __restrict q,
                                     const float* __restrict acc,
                                     const float* __restrict den, int64_t n) {
  for (int64_t j = 0; j < n; ++j) q[j] = acc[j] / std::max(den[j], 1.f);
}

MS_CPU_DISPATCH void ApplyLambda(float* __restrict out,
                                 const float* __restrict base,
                                 const float* __restrict q, float lambda,
                                 int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = base[j] + lambda * q[j];
}

MS_CPU_DISPATCH void TrimBelow(float* __restrict x, float v, int64_t n) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::fabs(x[j]) >= v ? x[j] : 0.f;
}

MS_CPU_DISPATCH void MaskAndNorms(float* __restrict tv,
                                  const float* __restrict mark, int64_t n,
                                  double* all, double* kept) {
  if (AbsSumIsExact(tv, n)) {
    *all = AbsSumInLanes(tv, n);
    // Marks of 0 and 1 keep a subset of the values, whose sum cannot round
    // either (no second check); other marks, such as 1/p, change the values.
    uint32_t other = 0;
    for (int64_t j = 0; j < n; ++j) {
      other |= static_cast<uint32_t>((mark[j] != 0.f) & (mark[j] != 1.f));
      tv[j] *= mark[j];
    }
    *kept = other == 0 ? AbsSumInLanes(tv, n) : IndexOrderAbsSum(tv, n);
    return;
  }
  // Both sums in index order, in one loop: two dependency chains in flight.
  double a = 0, k = 0;
  for (int64_t j = 0; j < n; ++j) {
    a += std::fabs(tv[j]);
    tv[j] *= mark[j];
    k += std::fabs(tv[j]);
  }
  *all = a;
  *kept = k;
}

// Without a branch per element.
MS_CPU_DISPATCH void BitsFromMark(const float* __restrict mark, int64_t n,
                                  uint64_t* __restrict bits) {
  for (int64_t w = 0; w * 64 < n; ++w) {
    const float* m = mark + w * 64;
    const int64_t len = std::min<int64_t>(64, n - w * 64);
    uint64_t word = 0;
    for (int64_t j = 0; j < len; ++j) {
      word |= static_cast<uint64_t>(m[j] != 0.f) << j;
    }
    bits[w] = word;
  }
}

MS_CPU_DISPATCH void MaskByBits(float* __restrict tv,
                                const uint64_t* __restrict bits, int64_t n) {
  // 32 entries per half word, each lane shifting by its own index: this
  // vectorises, a word index per element did not. A multiply, not a select,
  // so dropped negative entries stay -0 as before.
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const uint32_t h = static_cast<uint32_t>(bits[j >> 6] >> (j & 63));
    for (uint32_t i = 0; i < 32; ++i) {
      tv[j + i] *= static_cast<float>((h >> i) & 1u);
    }
  }
  for (; j < n; ++j) {
    tv[j] *= static_cast<float>((bits[j >> 6] >> (j & 63)) & 1);
  }
}

}  // namespace mergeserve
