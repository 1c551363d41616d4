#include "methods/sparse_task_vector.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mergeserve/base/cpu_dispatch.h"

namespace mergeserve {

SparseTaskVector::SparseTaskVector(int64_t numel, int64_t chunk)
    : words_((chunk + 63) / 64) {
  const int64_t chunks = chunk > 0 ? (numel + chunk - 1) / chunk : 0;
  bits_.assign(static_cast<size_t>(chunks * words_), 0);
  values_.resize(static_cast<size_t>(chunks));
}

void SparseTaskVector::Pack(int64_t ci, const float* tv, int64_t cnt) {
  uint64_t* bits = bits_.data() + ci * words_;
  // Without branches (a fifth of the entries kept at random would mispredict
  // one branch in five): every value is written, the kept ones advance.
  thread_local std::vector<float> scratch;
  scratch.resize(static_cast<size_t>(cnt));
  float* out = scratch.data();
  int64_t kept = 0;
  for (int64_t w = 0; w * 64 < cnt; ++w) {
    uint64_t word = 0;
    const int64_t end = std::min<int64_t>(cnt, (w + 1) * 64);
    for (int64_t j = w * 64; j < end; ++j) {
      const uint64_t nz = tv[j] != 0.f;
      out[kept] = tv[j];
      kept += static_cast<int64_t>(nz);
      word |= nz << (j - w * 64);
    }
    bits[w] = word;
  }
  values_[static_cast<size_t>(ci)].assign(out, out + kept);
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
