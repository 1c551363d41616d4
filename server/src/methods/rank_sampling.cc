#include "methods/rank_sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mergeserve/base/cpu_dispatch.h"
#include "methods/compress_store.h"

namespace mergeserve {
namespace {

// Indices j of the keys with low 16 bits set, in order; returns how many.
size_t ListLowBitsSetScalar(const uint32_t* key, size_t n, uint32_t* out) {
  size_t listed = 0;
  for (size_t j = 0; j < n; ++j) {
    out[listed] = static_cast<uint32_t>(j);
    listed += (key[j] & 0xffffu) != 0;
  }
  return listed;
}

#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
// Sixteen keys per step: a test mask and a compressing store of their
// indices (compilers do not vectorise the scalar loop's moving cursor).
__attribute__((target("avx512f,popcnt"))) size_t ListLowBitsSetAvx512(
    const uint32_t* key, size_t n, uint32_t* out) {
  const __m512i low = _mm512_set1_epi32(0xffff);
  __m512i index =
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  size_t listed = 0, j = 0;
  for (; j + 16 <= n; j += 16) {
    const __mmask16 m =
        _mm512_test_epi32_mask(_mm512_loadu_si512(key + j), low);
    listed += static_cast<size_t>(CompressStore32(out + listed, m, index));
    index = _mm512_add_epi32(index, step);
  }
  for (; j < n; ++j) {
    out[listed] = static_cast<uint32_t>(j);
    listed += (key[j] & 0xffffu) != 0;
  }
  return listed;
}
#endif

size_t ListLowBitsSet(const uint32_t* key, size_t n, uint32_t* out) {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  if (Avx512Kernels()) return ListLowBitsSetAvx512(key, n, out);
#endif
  return ListLowBitsSetScalar(key, n, out);
}

// A bucket's bounds on p, one 64-bit word: the p of its first rank in the
// low half, of its last in the high half (one gather fetches both).
uint64_t PackBounds(float lowest, float highest) {
  uint32_t l, h;
  std::memcpy(&l, &lowest, 4);
  std::memcpy(&h, &highest, 4);
  return uint64_t{h} << 32 | l;
}

float Half(uint64_t bounds, int high) {
  const uint32_t v = static_cast<uint32_t>(bounds >> (32 * high));
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}

// Marks 1 where u[j] is below the p of its bucket's first rank (kept
// whatever its rank in the bucket), else 0, and lists the j whose u[j] lies
// between that and the p of the bucket's last rank (undecided); returns how
// many.
size_t DecideByBucketScalar(const uint32_t* bucket, const float* u,
                            const uint64_t* bounds, size_t n, float* mark,
                            uint32_t* undecided) {
  size_t listed = 0;
  for (size_t j = 0; j < n; ++j) {
    const uint64_t b = bounds[bucket[j]];
    const bool keep = u[j] < Half(b, 0);
    mark[j] = keep ? 1.f : 0.f;
    undecided[listed] = static_cast<uint32_t>(j);
    // & rather than &&: no branch on an unpredictable draw.
    listed += static_cast<size_t>(!keep & (u[j] < Half(b, 1)));
  }
  return listed;
}

MS_INTRINSICS_BEGIN
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
// Sixteen at a time: two 8-lane gathers of both bounds, two compares and a
// compressing store (the scalar loop branches on unpredictable draws or
// does not vectorise).
__attribute__((target("avx512f,popcnt"))) size_t DecideByBucketAvx512(
    const uint32_t* bucket, const float* u, const uint64_t* bounds, size_t n,
    float* mark, uint32_t* undecided) {
  const __m512 one = _mm512_set1_ps(1.f);
  __m512i index =
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  // Even and odd 32-bit halves of the two gathers' sixteen words.
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20,
                                          22, 24, 26, 28, 30);
  const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
  size_t listed = 0, j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512i id = _mm512_loadu_si512(bucket + j);
    const __m512i w0 = _mm512_i32gather_epi64(
        _mm512_castsi512_si256(id), reinterpret_cast<const void*>(bounds), 8);
    const __m512i w1 =
        _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(id, 1),
                               reinterpret_cast<const void*>(bounds), 8);
    const __m512 lo =
        _mm512_castsi512_ps(_mm512_permutex2var_epi32(w0, evens, w1));
    const __m512 hi =
        _mm512_castsi512_ps(_mm512_permutex2var_epi32(w0, odds, w1));
    const __m512 uj = _mm512_loadu_ps(u + j);
    const __mmask16 keep = _mm512_cmp_ps_mask(uj, lo, _CMP_LT_OQ);
    const __mmask16 open = _mm512_mask_cmp_ps_mask(
        static_cast<__mmask16>(~keep), uj, hi, _CMP_LT_OQ);
    _mm512_storeu_ps(mark + j, _mm512_maskz_mov_ps(keep, one));
    listed +=
        static_cast<size_t>(CompressStore32(undecided + listed, open, index));
    index = _mm512_add_epi32(index, step);
  }
  const size_t rest = DecideByBucketScalar(bucket + j, u + j, bounds, n - j,
                                           mark + j, undecided + listed);
  for (size_t i = listed; i < listed + rest; ++i) {
    undecided[i] += static_cast<uint32_t>(j);
  }
  return listed + rest;
}

// Eight at a time: two 4-lane gathers of both bounds, two compares; the
// undecided (a few per row) are listed from a movemask, without AVX-512's
// compressing store.
__attribute__((target("avx2"))) size_t DecideByBucketAvx2(
    const uint32_t* bucket, const float* u, const uint64_t* bounds, size_t n,
    float* mark, uint32_t* undecided) {
  const __m256 one = _mm256_set1_ps(1.f);
  const auto* words = reinterpret_cast<const long long*>(bounds);
  size_t listed = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i id =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bucket + j));
    const __m256 w0 = _mm256_castsi256_ps(
        _mm256_i32gather_epi64(words, _mm256_castsi256_si128(id), 8));
    const __m256 w1 = _mm256_castsi256_ps(
        _mm256_i32gather_epi64(words, _mm256_extracti128_si256(id, 1), 8));
    // Per 128-bit half the even (low) and odd (high) words of both
    // gathers: entries 0 1 4 5 | 2 3 6 7, then the 64-bit pairs in order.
    const __m256 lo = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(w0, w1, _MM_SHUFFLE(2, 0, 2, 0))),
        _MM_SHUFFLE(3, 1, 2, 0)));
    const __m256 hi = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(w0, w1, _MM_SHUFFLE(3, 1, 3, 1))),
        _MM_SHUFFLE(3, 1, 2, 0)));
    const __m256 uj = _mm256_loadu_ps(u + j);
    const __m256 keep = _mm256_cmp_ps(uj, lo, _CMP_LT_OQ);
    const __m256 below = _mm256_cmp_ps(uj, hi, _CMP_LT_OQ);
    _mm256_storeu_ps(mark + j, _mm256_and_ps(keep, one));
    unsigned open = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_andnot_ps(keep, below)));
    while (open != 0) {
      undecided[listed++] = static_cast<uint32_t>(j + __builtin_ctz(open));
      open &= open - 1;
    }
  }
  const size_t rest = DecideByBucketScalar(bucket + j, u + j, bounds, n - j,
                                           mark + j, undecided + listed);
  for (size_t i = listed; i < listed + rest; ++i) {
    undecided[i] += static_cast<uint32_t>(j);
  }
  return listed + rest;
}
#endif
MS_INTRINSICS_END

size_t DecideByBucket(const uint32_t* bucket, const float* u,
                      const uint64_t* bounds, size_t n, float* mark,
                      uint32_t* undecided) {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  if (Avx512Kernels()) {
    return DecideByBucketAvx512(bucket, u, bounds, n, mark, undecided);
  }
  if (Avx2Kernels()) {
    return DecideByBucketAvx2(bucket, u, bounds, n, mark, undecided);
  }
#endif
  return DecideByBucketScalar(bucket, u, bounds, n, mark, undecided);
}

// words[w] bit i = (c0[64w + i] | c1[64w + i]) != 0: the buckets a row's
// counters touched, found by a scan of the counters rather than a flag
// stored per key (the counters span a few times the row; a scan of them
// costs less than a store per key).
void NonzeroToBitsScalar(const uint32_t* c0, const uint32_t* c1, size_t words,
                         uint64_t* out) {
  for (size_t w = 0; w < words; ++w) {
    uint64_t m = 0;
    for (size_t i = 0; i < 64; ++i) {
      m |= static_cast<uint64_t>((c0[w * 64 + i] | c1[w * 64 + i]) != 0) << i;
    }
    out[w] = m;
  }
}

#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
__attribute__((target("avx2"))) void NonzeroToBitsAvx2(const uint32_t* c0,
                                                       const uint32_t* c1,
                                                       size_t words,
                                                       uint64_t* out) {
  const __m256i zero = _mm256_setzero_si256();
  for (size_t w = 0; w < words; ++w) {
    uint64_t m = 0;
    for (int q = 0; q < 8; ++q) {
      const size_t at = w * 64 + static_cast<size_t>(q) * 8;
      const __m256i any = _mm256_or_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + at)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c1 + at)));
      // movemask of (counter == 0), inverted.
      const uint32_t none = static_cast<uint32_t>(_mm256_movemask_ps(
          _mm256_castsi256_ps(_mm256_cmpeq_epi32(any, zero))));
      m |= static_cast<uint64_t>(~none & 0xffu) << (q * 8);
    }
    out[w] = m;
  }
}

// Sixteen counters per test: the mask is the bits, without AVX2's
// compare, movemask and shift per eight.
__attribute__((target("avx512f"))) void NonzeroToBitsAvx512(const uint32_t* c0,
                                                            const uint32_t* c1,
                                                            size_t words,
                                                            uint64_t* out) {
  for (size_t w = 0; w < words; ++w) {
    uint64_t m = 0;
    for (int q = 0; q < 4; ++q) {
      const size_t at = w * 64 + static_cast<size_t>(q) * 16;
      const __m512i any = _mm512_or_si512(_mm512_loadu_si512(c0 + at),
                                          _mm512_loadu_si512(c1 + at));
      m |= static_cast<uint64_t>(_mm512_test_epi32_mask(any, any)) << (q * 16);
    }
    out[w] = m;
  }
}
#endif

void NonzeroToBits(const uint32_t* c0, const uint32_t* c1, size_t words,
                   uint64_t* out) {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  if (Avx512Kernels()) return NonzeroToBitsAvx512(c0, c1, words, out);
  if (Avx2Kernels()) return NonzeroToBitsAvx2(c0, c1, words, out);
#endif
  NonzeroToBitsScalar(c0, c1, words, out);
}

// RowBuckets is the counting half, shared by RowRanks and RowKeeps: it fills
// b.key[0] with the keys and, where the bucket pass applies (false: wide or
// mostly low-bits-set rows, fp32 deltas), b.key[1] with each key's bucket,
// b.key[2] and b.key[3] with the counts of the row's first and second half,
// and b.seen with the buckets touched. The halves have counters of their
// own, interleaved: consecutive keys often share a bucket, and one counter
// array would make each increment wait on the last. A row's keys span
// thousands of buckets and touch a few hundred: the counters stay zero
// between rows (only touched ones are reset) and prefix sums visit the
// touched buckets only.
inline __attribute__((always_inline)) bool RowBuckets(const float* __restrict x,
                                                      size_t n,
                                                      RankScratch& b) {
  if (b.key[0].size() < n) b.key[0].resize(n);
  uint32_t* key = b.key[0].data();
  uint32_t lo = 0xffff, hi = 0;     // top 16 bits of the non-zero keys
  uint32_t nodd = 0;                // keys with low bits set
  for (size_t j = 0; j < n; ++j) {  // branchless: it vectorises
    uint32_t k;
    const float a = std::fabs(x[j]);
    std::memcpy(&k, &a, 4);
    key[j] = k;
    const uint32_t top = k >> 16;
    lo = std::min(lo, k != 0 ? top : 0xffffu);
    hi = std::max(hi, top);
    nodd += (k & 0xffffu) != 0;
  }
  // Bucket 0 holds exact zeros (the smallest keys), then two per top value:
  // low bits zero, then low bits set.
  const size_t buckets = hi >= lo ? 2 * size_t{hi - lo} + 3 : 1;
  if (buckets > 4 * n + 1024 || nodd > n / 4) return false;
  if (b.key[1].size() < n) b.key[1].resize(n);
  std::vector<uint32_t>& first = b.key[2];
  std::vector<uint32_t>& start = b.key[3];  // the second half's
  // Whole words of counters: the scan for touched buckets reads them all
  // (those past `buckets` stay zero).
  const size_t words = (buckets + 63) / 64;
  if (first.size() < words * 64) {
    first.resize(words * 64, 0);
    start.resize(words * 64, 0);
    b.key[4].resize(words * 64, 0);
    b.bounds.resize(words * 64, 0);
  }
  uint32_t* __restrict bucket = b.key[1].data();
  for (size_t j = 0; j < n; ++j) {
    const uint32_t k = key[j];
    bucket[j] = k == 0 ? 0 : (((k >> 16) - lo) << 1 | ((k & 0xffffu) != 0)) + 1;
  }
  uint32_t* __restrict c0 = first.data();
  uint32_t* __restrict c1 = start.data();
  const size_t half = n / 2;
  for (size_t j = 0; j < half; ++j) {
    ++c0[bucket[j]];
    ++c1[bucket[half + j]];
  }
  if (n % 2 != 0) ++c1[bucket[n - 1]];
  b.seen.resize(words);
  NonzeroToBits(c0, c1, words, b.seen.data());
  return true;
}

// Calls fn(id) for each bucket RowBuckets saw, in increasing order.
template <typename Fn>
inline __attribute__((always_inline)) void ForTouched(
    const std::vector<uint64_t>& seen, Fn&& fn) {
  for (size_t w = 0; w < seen.size(); ++w) {
    for (uint64_t m = seen[w]; m != 0; m &= m - 1) {
      fn(static_cast<uint32_t>(w * 64 + __builtin_ctzll(m)));
    }
  }
}

// DELLA's keep probability of each rank r of a row of cols > 1:
// p = r/(cols-1)·2ε + (d−ε), in the ATen path's float operations and order,
// so both agree bitwise. A worker keeps the table until the row length or
// the expert's parameters change.
const float* RankProbabilities(int64_t cols, double density, double eps,
                               RankScratch& b) {
  if (b.p_cols != cols || b.p_density != density || b.p_eps != eps) {
    const float span = static_cast<float>(cols - 1);
    const float width = static_cast<float>(2 * eps);
    const float low = static_cast<float>(density - eps);
    b.p.resize(static_cast<size_t>(cols));
    for (int64_t r = 0; r < cols; ++r) {
      b.p[static_cast<size_t>(r)] =
          (static_cast<float>(r) / span) * width + low;
    }
    b.p_cols = cols;
    b.p_density = density;
    b.p_eps = eps;
  }
  return b.p.data();
}

// Keep marks (1/0: kept where u < p(rank)) of one row of more than one
// column without the ranks. Each float operation rounds monotonically, so p
// does not decrease with rank and a key's bucket bounds its p between those
// of the bucket's first and last rank: u below the first keeps, u at or above
// the last drops. Only draws in between (a few per row: buckets are small
// and 2ε/(cols-1) wide per member) need the exact rank, counted over the row.
// A row with many undecided draws (one of many equal keys, e.g. in a tensor
// the fine-tune left alone) places its equal keys in index order instead,
// as RowRanks does: counting over the row for each draw would be quadratic.
// Returns false where the bucket pass does not apply, or where more than
// kMaxUndecided draws of keys with low bits set are undecided; the caller
// then ranks the row.
constexpr size_t kMaxUndecided = 16;
MS_CPU_DISPATCH bool RowKeeps(const float* __restrict x,
                              const float* __restrict u, int64_t cols,
                              const float* __restrict prob, RankScratch& b,
                              float* __restrict mark) {
  const size_t n = static_cast<size_t>(cols);
  if (!RowBuckets(x, n, b)) return false;
  const uint32_t* key = b.key[0].data();
  const uint32_t* bucket = b.key[1].data();
  uint32_t* first = b.key[2].data();
  uint32_t* start = b.key[3].data();
  uint64_t* bounds = b.bounds.data();
  uint32_t* begins = b.key[4].data();  // each touched bucket's first rank
  uint32_t sum = 0;
  ForTouched(b.seen, [&](uint32_t id) {
    const uint32_t size = first[id] + start[id];
    bounds[id] = PackBounds(prob[sum], prob[sum + size - 1]);
    begins[id] = sum;
    sum += size;
    first[id] = start[id] = 0;  // zero again for the next row
  });
  if (b.idx.size() < n) b.idx.resize(n);
  uint32_t* undecided = b.idx.data();
  size_t listed = DecideByBucket(bucket, u, bounds, n, mark, undecided);
  // Bucket 0 (zeros) and the odd ids hold equal keys only.
  auto equal_keys = [](uint32_t id) { return id == 0 || (id & 1) != 0; };
  if (listed > kMaxUndecided) {
    size_t others = 0;
    for (size_t i = 0; i < listed; ++i) {
      const uint32_t j = undecided[i];
      if (equal_keys(bucket[j])) {
        mark[j] = 2.f;  // decided below, at its place
      } else {
        undecided[others++] = j;
      }
    }
    if (others > kMaxUndecided) return false;
    listed = others;
    // The buckets' starts again (kept only on this rare path), then each
    // equal key's rank is its bucket's start plus its place in index order.
    for (size_t j = 0; j < n; ++j) ++first[bucket[j]];
    uint32_t at = 0;
    ForTouched(b.seen, [&](uint32_t id) {
      const uint32_t size = first[id];
      first[id] = at;
      at += size;
    });
    for (size_t j = 0; j < n; ++j) {
      const uint32_t id = bucket[j];
      if (!equal_keys(id)) continue;
      const uint32_t r = first[id]++;
      if (mark[j] == 2.f) mark[j] = u[j] < prob[r] ? 1.f : 0.f;
    }
    ForTouched(b.seen, [&](uint32_t id) { first[id] = 0; });
  }
  for (size_t i = 0; i < listed; ++i) {
    const size_t j = undecided[i];
    // The stable rank: smaller keys anywhere, equal keys before j. Where
    // j's bucket holds equal keys only, the smaller keys are those of the
    // buckets below (its first rank): a scan of the row saved.
    const uint32_t k = key[j];
    uint32_t r = 0;
    if (equal_keys(bucket[j])) {
      r = begins[bucket[j]];
    } else {
      for (size_t i = 0; i < n; ++i) r += key[i] < k;
    }
    for (size_t i = 0; i < j; ++i) r += key[i] == k;
    mark[j] = u[j] < prob[r] ? 1.f : 0.f;
  }
  return true;
}

}  // namespace

// One stable counting pass over buckets of (top 16 bits, low 16 bits
// non-zero) ranks every key whose low bits are zero: its bucket holds only
// equal keys, so index order is the order. The few keys with low bits set
// are then ranked by a sort of their own within their buckets. A byte-wise
// LSD radix sort stalls here: most bytes take a handful of values, and every
// count of the same bucket waits on the last.
MS_CPU_DISPATCH void RowRanks(const float* __restrict x, int64_t cols,
                              RankScratch& b, uint32_t* __restrict rank) {
  const size_t n = static_cast<size_t>(cols);
  const bool bucketed = RowBuckets(x, n, b);
  const uint32_t* key = b.key[0].data();
  if (bucketed) {
    if (b.idx.size() < n) b.idx.resize(n);
    std::vector<uint32_t>& first = b.key[2];
    std::vector<uint32_t>& start = b.key[3];
    std::vector<uint32_t>& begins = b.key[4];
    const uint32_t* bucket = b.key[1].data();
    uint32_t sum = 0;
    ForTouched(b.seen, [&](uint32_t id) {
      const uint32_t a = first[id], c = start[id];
      begins[id] = sum;
      first[id] = sum;
      start[id] = sum + a;
      sum += a + c;
    });
    const size_t half = n / 2;
    for (size_t j = 0; j < half; ++j) {
      rank[j] = first[bucket[j]]++;
      rank[half + j] = start[bucket[half + j]]++;
    }
    if (n % 2 != 0) rank[n - 1] = start[bucket[n - 1]]++;
    // Index order within a bucket: the order, except in the buckets of keys
    // with low bits set (the even ids from 2), whose members are listed
    // (`odd`) to re-rank.
    uint32_t* odd = b.idx.data();
    const size_t listed = ListLowBitsSet(key, n, odd);
    // `start` now holds each bucket's end, so [begins[id], start[id]) is
    // bucket id. Each listed bucket's members, placed by index, are sorted
    // by key there (few per bucket: insertion), then take those ranks.
    std::vector<uint32_t>& at = b.at;  // member index by provisional rank
    if (at.size() < n) at.resize(n);
    for (size_t i = 0; i < listed; ++i) at[rank[odd[i]]] = odd[i];
    constexpr uint32_t kDone = ~0u;
    for (size_t i = 0; i < listed; ++i) {
      const uint32_t id = bucket[odd[i]];
      const uint32_t begin = std::exchange(begins[id], kDone);
      if (begin == kDone) continue;  // sorted at its first member
      const uint32_t end = start[id];
      uint32_t* m = at.data() + begin;
      const uint32_t len = end - begin;
      if (len <= 32) {
        for (uint32_t r = 1; r < len; ++r) {
          const uint32_t v = m[r];
          uint32_t q = r;
          for (; q > 0 && key[m[q - 1]] > key[v]; --q) m[q] = m[q - 1];
          m[q] = v;
        }
      } else {
        std::sort(m, m + len, [key](uint32_t p, uint32_t q) {
          return key[p] != key[q] ? key[p] < key[q] : p < q;
        });
      }
      for (uint32_t r = 0; r < len; ++r) rank[m[r]] = begin + r;
    }
    // The counters go back to zero for the next row.
    ForTouched(b.seen, [&](uint32_t id) { first[id] = start[id] = 0; });
    return;
  }
  // Wide or mostly low-bits-set rows (fp32 deltas): (key, index) pairs are
  // unique, so any sort gives the stable order.
  std::vector<uint64_t>& pairs = b.pairs;
  pairs.resize(n);
  for (size_t j = 0; j < n; ++j) pairs[j] = uint64_t{key[j]} << 32 | j;
  std::sort(pairs.begin(), pairs.end());
  for (size_t i = 0; i < n; ++i) {
    rank[static_cast<uint32_t>(pairs[i])] = static_cast<uint32_t>(i);
  }
}

MS_CPU_DISPATCH void MarkRankSampled(const float* __restrict tv,
                                     const float* __restrict u, int64_t cnt,
                                     int64_t cols, double density, double eps,
                                     bool inverse, RankScratch& b,
                                     float* __restrict mark) {
  const float* prob =
      cols > 1 ? RankProbabilities(cols, density, eps, b) : nullptr;
  const float flat = static_cast<float>(density);
  if (b.rank.size() < static_cast<size_t>(cnt)) {
    b.rank.resize(static_cast<size_t>(cnt));
  }
  uint32_t* rank = b.rank.data();
  for (int64_t r = 0; r < cnt; r += cols) {
    // Without 1/p only the keep decision matters.
    if (!inverse && cols > 1 &&
        RowKeeps(tv + r, u + r, cols, prob, b, mark + r)) {
      continue;
    }
    RowRanks(tv + r, cols, b, rank + r);
    for (int64_t j = r; j < r + cols; ++j) {
      const float p = cols > 1 ? prob[rank[j]] : flat;
      const bool keep = u[j] < p;
      mark[j] = keep ? (inverse ? 1.f / p : 1.f) : 0.f;
    }
  }
}

}  // namespace mergeserve
