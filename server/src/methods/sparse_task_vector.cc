#include "methods/sparse_task_vector.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mergeserve/base/cpu_dispatch.h"
#include "methods/compress_store.h"

namespace mergeserve {

namespace {

// Entries [j, end) of the bit word that starts at `first`, one at a time.
// Without branches (a fifth of the entries kept at random would mispredict
// one branch in five): every value is written, the kept ones advance.
inline void PackRange(const float* tv, int64_t j, int64_t end, int64_t first,
                      float* out, int64_t& kept, uint64_t& word) {
  for (; j < end; ++j) {
    const uint64_t nz = tv[j] != 0.f;
    out[kept] = tv[j];
    kept += static_cast<int64_t>(nz);
    word |= nz << (j - first);
  }
}

int64_t PackValuesScalar(const float* tv, int64_t cnt, uint64_t* bits,
                         float* out) {
  int64_t kept = 0;
  for (int64_t w = 0; w * 64 < cnt; ++w) {
    uint64_t word = 0;
    PackRange(tv, w * 64, std::min<int64_t>(cnt, (w + 1) * 64), w * 64, out,
              kept, word);
    bits[w] = word;
  }
  return kept;
}

#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
// The scalar loop's store address waits on the last count (3-4 cycles an
// entry: most of a weight sweep's second point, the one that keeps the
// trimmed τ). Eight at a time instead: a compare, a table-driven permute
// that packs the kept lanes first (AVX2 has no compressing store), one
// store, a popcount.
struct CompactTable {
  // For each byte mask, the positions of its set bits, packed from byte 0.
  uint64_t lanes[256];
  constexpr CompactTable() : lanes() {
    for (int m = 0; m < 256; ++m) {
      uint64_t packed = 0;
      int at = 0;
      for (int i = 0; i < 8; ++i) {
        if ((m >> i & 1) != 0) packed |= uint64_t(i) << (8 * at++);
      }
      lanes[m] = packed;
    }
  }
};
constexpr CompactTable kCompact;

__attribute__((target("avx2,popcnt"))) int64_t PackValuesAvx2(const float* tv,
                                                              int64_t cnt,
                                                              uint64_t* bits,
                                                              float* out) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t kept = 0, j = 0;
  for (int64_t w = 0; w * 64 < cnt; ++w) {
    uint64_t word = 0;
    const int64_t end = std::min<int64_t>(cnt, (w + 1) * 64);
    for (; j + 8 <= end; j += 8) {
      const __m256 x = _mm256_loadu_ps(tv + j);
      // Unordered or not equal: true for NaN, as `!=` is.
      const unsigned m = static_cast<unsigned>(
          _mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_NEQ_UQ)));
      const __m256i perm = _mm256_cvtepu8_epi32(
          _mm_cvtsi64_si128(static_cast<long long>(kCompact.lanes[m])));
      _mm256_storeu_ps(out + kept, _mm256_permutevar8x32_ps(x, perm));
      kept += __builtin_popcount(m);
      word |= uint64_t{m} << (j - w * 64);
    }
    PackRange(tv, j, end, w * 64, out, kept, word);
    bits[w] = word;
  }
  return kept;
}

__attribute__((target("avx512f,popcnt"))) int64_t PackValuesAvx512(
    const float* tv, int64_t cnt, uint64_t* bits, float* out) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t kept = 0, j = 0;
  for (int64_t w = 0; w * 64 < cnt; ++w) {
    uint64_t word = 0;
    const int64_t end = std::min<int64_t>(cnt, (w + 1) * 64);
    for (; j + 16 <= end; j += 16) {
      const __m512 x = _mm512_loadu_ps(tv + j);
      const __mmask16 m = _mm512_cmp_ps_mask(x, zero, _CMP_NEQ_UQ);
      kept += CompressStore32(out + kept, m, _mm512_castps_si512(x));
      word |= uint64_t{m} << (j - w * 64);
    }
    PackRange(tv, j, end, w * 64, out, kept, word);
    bits[w] = word;
  }
  return kept;
}
#endif

// Bits of the entries that are not zero (NaN counts, -0 does not: as `!=`)
// and those values in order into `out`; returns how many. `out` has room
// for cnt + 16 (the AVX2 kernel stores eight lanes at a time).
int64_t PackValues(const float* tv, int64_t cnt, uint64_t* bits, float* out) {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  if (Avx512Kernels()) return PackValuesAvx512(tv, cnt, bits, out);
  if (Avx2Kernels()) return PackValuesAvx2(tv, cnt, bits, out);
#endif
  return PackValuesScalar(tv, cnt, bits, out);
}

}  // namespace

SparseTaskVector::SparseTaskVector(int64_t numel, int64_t chunk)
    : words_((chunk + 63) / 64) {
  const int64_t chunks = chunk > 0 ? (numel + chunk - 1) / chunk : 0;
  bits_.assign(static_cast<size_t>(chunks * words_), 0);
  values_.resize(static_cast<size_t>(chunks));
}

void SparseTaskVector::Pack(int64_t ci, const float* tv, int64_t cnt) {
  uint64_t* bits = bits_.data() + ci * words_;
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(cnt) + 16);  // the kernels' overrun
  const int64_t kept = PackValues(tv, cnt, bits, scratch.data());
  values_[static_cast<size_t>(ci)].assign(scratch.data(),
                                          scratch.data() + kept);
}

namespace {

void UnpackScalar(const uint64_t* bits, const float* v, int64_t cnt,
                  float* tv) {
  std::fill(tv, tv + cnt, 0.f);
  for (int64_t w = 0; w * 64 < cnt; ++w) {
    uint64_t word = bits[w];
    while (word != 0) {
      const int bit = __builtin_ctzll(word);
      tv[w * 64 + bit] = *v++;
      word &= word - 1;
    }
  }
}

#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
// Sixteen elements per step: a masked load of the next kept values (it
// never touches memory past them) expanded to their bits' places.
__attribute__((target("avx512f,popcnt"))) void UnpackAvx512(
    const uint64_t* bits, const float* v, int64_t cnt, float* tv) {
  int64_t j = 0;
  for (; j + 16 <= cnt; j += 16) {
    const auto m = static_cast<__mmask16>(bits[j >> 6] >> (j & 63));
    const int k = __builtin_popcount(m);
    const __m512 kept =
        _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << k) - 1), v);
    _mm512_storeu_ps(tv + j, _mm512_maskz_expand_ps(m, kept));
    v += k;
  }
  for (; j < cnt; ++j) {
    tv[j] = (bits[j >> 6] >> (j & 63)) & 1 ? *v++ : 0.f;
  }
}
#endif

}  // namespace

void SparseTaskVector::Unpack(int64_t ci, int64_t cnt, float* tv) const {
  const uint64_t* bits = bits_.data() + ci * words_;
  const float* v = values_[static_cast<size_t>(ci)].data();
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  if (Avx512Kernels()) return UnpackAvx512(bits, v, cnt, tv);
#endif
  UnpackScalar(bits, v, cnt, tv);
}

int64_t SparseTaskVector::bytes() const {
  int64_t b = static_cast<int64_t>(sizeof(*this) + bits_.size() * 8);
  for (const auto& v : values_) {
    b += static_cast<int64_t>(sizeof(v) + v.capacity() * sizeof(float));
  }
  return b;
}

}  // namespace mergeserve
