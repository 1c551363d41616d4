#ifndef MERGESERVE_METHODS_COMPRESS_STORE_H_
#define MERGESERVE_METHODS_COMPRESS_STORE_H_

#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
#include <immintrin.h>

#include <cstdint>

namespace mergeserve {

// AVX-512's compressing store with a memory operand is microcoded on AMD
// Zen 4 (about one per 140 cycles, uops.info), where it took half of della's
// keep decisions. Compressing into a register and storing its first
// popcount(m) lanes with a masked store writes the same bytes, fast
// everywhere. Returns how many lanes were written.
// `out` may hold 32-bit integers or floats (the store does not alias-check).
__attribute__((target("avx512f,popcnt"))) inline int CompressStore32(
    void* out, __mmask16 m, __m512i v) {
  const int k = __builtin_popcount(m);
  _mm512_mask_storeu_epi32(out, static_cast<__mmask16>((1u << k) - 1),
                           _mm512_maskz_compress_epi32(m, v));
  return k;
}

}  // namespace mergeserve

#endif
#endif  // MERGESERVE_METHODS_COMPRESS_STORE_H_
