#include "mergeserve/base/philox.h"

#include "mergeserve/base/cpu_dispatch.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mergeserve {

namespace {

// A loop the compiler vectorises across blocks: the 32x32->64 multiplies
// become pmuludq. For CPUs without AVX2, the blocks the hand-written
// kernels leave, and the portable kernel set of the tests.
MS_CPU_DISPATCH void PhiloxUniformBlocksPortable(std::array<uint32_t, 2> key,
                                                 uint32_t c2, uint32_t c3,
                                                 uint64_t first, int64_t blocks,
                                                 float* __restrict out) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    uint32_t x0 = static_cast<uint32_t>(block);
    uint32_t x1 = static_cast<uint32_t>(block >> 32);
    uint32_t x2 = c2, x3 = c3;
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(kM0) * x0;
      const uint64_t p1 = static_cast<uint64_t>(kM1) * x2;
      const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1 ^ k0;
      const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3 ^ k1;
      x1 = static_cast<uint32_t>(p1);
      x3 = static_cast<uint32_t>(p0);
      x0 = y0;
      x2 = y2;
      k0 += kW0;
      k1 += kW1;
    }
    out[4 * b] = static_cast<float>(x0 >> 8) * 0x1.0p-24f;
    out[4 * b + 1] = static_cast<float>(x1 >> 8) * 0x1.0p-24f;
    out[4 * b + 2] = static_cast<float>(x2 >> 8) * 0x1.0p-24f;
    out[4 * b + 3] = static_cast<float>(x3 >> 8) * 0x1.0p-24f;
  }
}

MS_INTRINSICS_BEGIN
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
#define MS_AVX512_INLINE \
  __attribute__((target("avx512f"), always_inline)) inline

// The top 24 bits as a float in [0, 1), as the portable loop rounds them.
MS_AVX512_INLINE __m512 Uniform(__m512i x) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(x, 8)),
                       _mm512_set1_ps(0x1.0p-24f));
}

MS_AVX512_INLINE __m512 UnpackLoPd(__m512 a, __m512 c) {
  return _mm512_castpd_ps(
      _mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
}

MS_AVX512_INLINE __m512 UnpackHiPd(__m512 a, __m512 c) {
  return _mm512_castpd_ps(
      _mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
}

// Philox's ten rounds on kHalves groups of eight blocks, one block per
// 64-bit lane, its words in the lanes' low halves: pmuludq multiplies those
// and leaves the 64-bit product in place, so a round is two multiplies, two
// shifts and two three-way xors per group. (Blocks in 32-bit lanes need the
// odd lanes shifted in and both halves blended back every round: 16 rather
// than 12 instructions per sixteen blocks.) The high halves of the lanes
// carry garbage that pmuludq ignores. Groups are independent chains: four
// of them keep the multipliers busy through the chains' latency.
template <int kHalves>
MS_AVX512_INLINE void PhiloxRounds(std::array<uint32_t, 2> key,
                                   __m512i (&x)[kHalves][4]) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  const __m512i m0 = _mm512_set1_epi64(kM0);
  const __m512i m1 = _mm512_set1_epi64(kM1);
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi64(k0);
    const __m512i key1 = _mm512_set1_epi64(k1);
    for (int h = 0; h < kHalves; ++h) {
      const __m512i p0 = _mm512_mul_epu32(m0, x[h][0]);
      const __m512i p1 = _mm512_mul_epu32(m1, x[h][2]);
      // 0x96: a ^ b ^ c.
      x[h][0] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), x[h][1],
                                          key0, 0x96);
      x[h][2] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), x[h][3],
                                          key1, 0x96);
      x[h][1] = p1;
      x[h][3] = p0;
    }
    k0 += kW0;
    k1 += kW1;
  }
}

// The uniforms of sixteen blocks, groups a and e of PhiloxRounds, in the
// output order: the words' low halves packed into 32-bit lanes (block i in
// lane i), then a 4x16 transpose.
MS_AVX512_INLINE void StoreUniforms16(const __m512i (&a)[4],
                                      const __m512i (&e)[4], float* o) {
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16,
                                               18, 20, 22, 24, 26, 28, 30);
  const __m512 f0 = Uniform(_mm512_permutex2var_epi32(a[0], low_halves, e[0]));
  const __m512 f1 = Uniform(_mm512_permutex2var_epi32(a[1], low_halves, e[1]));
  const __m512 f2 = Uniform(_mm512_permutex2var_epi32(a[2], low_halves, e[2]));
  const __m512 f3 = Uniform(_mm512_permutex2var_epi32(a[3], low_halves, e[3]));
  // Per 128-bit lane, u<i> holds block i of each group of four blocks.
  const __m512 t0 = _mm512_unpacklo_ps(f0, f1), t1 = _mm512_unpackhi_ps(f0, f1);
  const __m512 t2 = _mm512_unpacklo_ps(f2, f3), t3 = _mm512_unpackhi_ps(f2, f3);
  const __m512 u0 = UnpackLoPd(t0, t2), u1 = UnpackHiPd(t0, t2);
  const __m512 u2 = UnpackLoPd(t1, t3), u3 = UnpackHiPd(t1, t3);
  // Blocks 0 8 1 9, 2 10 3 11, 4 12 5 13, 6 14 7 15; then in order.
  const __m512 s0 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0));
  const __m512 s1 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(2, 0, 2, 0));
  const __m512 s2 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1));
  const __m512 s3 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 1, 3, 1));
  _mm512_storeu_ps(o, _mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(o + 16,
                   _mm512_shuffle_f32x4(s2, s3, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(o + 32,
                   _mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(o + 48,
                   _mm512_shuffle_f32x4(s2, s3, _MM_SHUFFLE(3, 1, 3, 1)));
}

// kHalves groups of eight blocks from `block` on (no wrap of the low
// counter word within them), their uniforms to `o`.
template <int kHalves>
MS_AVX512_INLINE void PhiloxUniformsAvx512(std::array<uint32_t, 2> key,
                                           uint32_t c2, uint32_t c3,
                                           uint64_t block, float* o) {
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  __m512i x[kHalves][4];
  for (int h = 0; h < kHalves; ++h) {
    x[h][0] = _mm512_add_epi64(
        _mm512_set1_epi64(static_cast<uint32_t>(block) + 8u * h), lane);
    x[h][1] = _mm512_set1_epi64(static_cast<uint32_t>(block >> 32));
    x[h][2] = _mm512_set1_epi64(c2);
    x[h][3] = _mm512_set1_epi64(c3);
  }
  PhiloxRounds<kHalves>(key, x);
  for (int h = 0; h < kHalves; h += 2)
    StoreUniforms16(x[h], x[h + 1], o + 32 * h);
}

// Thirty-two blocks per step while they last, then sixteen; stops before a
// wrap of the low counter word within a step (the caller takes those
// blocks one at a time). Returns the blocks done.
__attribute__((target("avx512f"))) int64_t PhiloxUniformBlocksAvx512(
    std::array<uint32_t, 2> key, uint32_t c2, uint32_t c3, uint64_t first,
    int64_t blocks, float* __restrict out) {
  int64_t b = 0;
  for (; b + 32 <= blocks; b += 32) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    if (static_cast<uint32_t>(block) > 0xffffffffu - 31) break;
    PhiloxUniformsAvx512<4>(key, c2, c3, block, out + 4 * b);
  }
  for (; b + 16 <= blocks; b += 16) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    if (static_cast<uint32_t>(block) > 0xffffffffu - 15) break;
    PhiloxUniformsAvx512<2>(key, c2, c3, block, out + 4 * b);
  }
  return b;
}

#define MS_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

MS_AVX2_INLINE __m256 Uniform8(__m256i x) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 8)),
                       _mm256_set1_ps(0x1.0p-24f));
}

// Block i of two halves of four blocks in 64-bit lanes (their words in the
// lanes' low halves) in 32-bit lane i.
MS_AVX2_INLINE __m256i LowHalves8(__m256i a, __m256i e) {
  // Per 128-bit half: a's two low words, then e's: blocks 0 1 4 5 | 2 3 6 7.
  const __m256 mixed = _mm256_shuffle_ps(
      _mm256_castsi256_ps(a), _mm256_castsi256_ps(e), _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_permute4x64_epi64(_mm256_castps_si256(mixed),
                                  _MM_SHUFFLE(3, 1, 2, 0));
}

// PhiloxUniformBlocksAvx512 for CPUs with AVX2 only: eight blocks per step,
// two halves of four in 64-bit lanes, then a 4x8 transpose into the output
// order.
__attribute__((target("avx2"))) int64_t PhiloxUniformBlocksAvx2(
    std::array<uint32_t, 2> key, uint32_t c2, uint32_t c3, uint64_t first,
    int64_t blocks, float* __restrict out) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i four = _mm256_set1_epi64x(4);
  const __m256i m0 = _mm256_set1_epi64x(kM0);
  const __m256i m1 = _mm256_set1_epi64x(kM1);
  int64_t b = 0;
  for (; b + 8 <= blocks; b += 8) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    // The low counter word must not wrap within the eight.
    if (static_cast<uint32_t>(block) > 0xffffffffu - 7) break;
    __m256i a0 = _mm256_add_epi64(
        _mm256_set1_epi64x(static_cast<uint32_t>(block)), lane);
    __m256i e0 = _mm256_add_epi64(a0, four);
    __m256i a1 = _mm256_set1_epi64x(static_cast<uint32_t>(block >> 32));
    __m256i e1 = a1;
    __m256i a2 = _mm256_set1_epi64x(c2), e2 = a2;
    __m256i a3 = _mm256_set1_epi64x(c3), e3 = a3;
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      const __m256i key0 = _mm256_set1_epi64x(k0);
      const __m256i key1 = _mm256_set1_epi64x(k1);
      const __m256i pa0 = _mm256_mul_epu32(m0, a0);
      const __m256i pa1 = _mm256_mul_epu32(m1, a2);
      const __m256i pe0 = _mm256_mul_epu32(m0, e0);
      const __m256i pe1 = _mm256_mul_epu32(m1, e2);
      a0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa1, 32), a1),
                            key0);
      a2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pa0, 32), a3),
                            key1);
      e0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pe1, 32), e1),
                            key0);
      e2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(pe0, 32), e3),
                            key1);
      a1 = pa1;
      a3 = pa0;
      e1 = pe1;
      e3 = pe0;
      k0 += kW0;
      k1 += kW1;
    }
    const __m256i x0 = LowHalves8(a0, e0), x1 = LowHalves8(a1, e1);
    const __m256i x2 = LowHalves8(a2, e2), x3 = LowHalves8(a3, e3);
    const __m256 f0 = Uniform8(x0), f1 = Uniform8(x1);
    const __m256 f2 = Uniform8(x2), f3 = Uniform8(x3);
    // Per 128-bit half, u<i> holds block i of each group of four blocks.
    const __m256 t0 = _mm256_unpacklo_ps(f0, f1),
                 t1 = _mm256_unpackhi_ps(f0, f1);
    const __m256 t2 = _mm256_unpacklo_ps(f2, f3),
                 t3 = _mm256_unpackhi_ps(f2, f3);
    const __m256 u0 = _mm256_castpd_ps(
        _mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    const __m256 u1 = _mm256_castpd_ps(
        _mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    const __m256 u2 = _mm256_castpd_ps(
        _mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    const __m256 u3 = _mm256_castpd_ps(
        _mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    // Blocks 0 4, 1 5, 2 6, 3 7; then in order.
    float* o = out + 4 * b;
    _mm256_storeu_ps(o, _mm256_permute2f128_ps(u0, u1, 0x20));
    _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
    _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
  }
  return b;
}
#endif
MS_INTRINSICS_END

}  // namespace

void PhiloxUniformBlocks(std::array<uint32_t, 2> key, uint32_t c2, uint32_t c3,
                         uint64_t first, int64_t blocks, float* out) {
  int64_t done = 0;
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  const bool avx512 = Avx512Kernels();
  const int64_t width = avx512 ? 16 : (Avx2Kernels() ? 8 : 0);
  // Until a wrap of the low counter word, or fewer than `width` are left.
  while (width > 0 && blocks - done >= width) {
    const uint64_t at = first + static_cast<uint64_t>(done);
    done += avx512 ? PhiloxUniformBlocksAvx512(key, c2, c3, at, blocks - done,
                                               out + 4 * done)
                   : PhiloxUniformBlocksAvx2(key, c2, c3, at, blocks - done,
                                             out + 4 * done);
    if (blocks - done >= width) {  // stopped at a wrap: `width` the other way
      PhiloxUniformBlocksPortable(key, c2, c3,
                                  first + static_cast<uint64_t>(done), width,
                                  out + 4 * done);
      done += width;
    }
  }
#endif
  PhiloxUniformBlocksPortable(key, c2, c3, first + static_cast<uint64_t>(done),
                              blocks - done, out + 4 * done);
}

}  // namespace mergeserve
