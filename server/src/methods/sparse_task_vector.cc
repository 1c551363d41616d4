#include "methods/sparse_task_vector.h"

#include <algorithm>

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

void SparseTaskVector::Unpack(int64_t ci, int64_t cnt, float* tv) const {
  const uint64_t* bits = bits_.data() + ci * words_;
  const float* v = values_[static_cast<size_t>(ci)].data();
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

int64_t SparseTaskVector::bytes() const {
  int64_t b = static_cast<int64_t>(sizeof(*this) + bits_.size() * 8);
  for (const auto& v : values_) {
    b += static_cast<int64_t>(sizeof(v) + v.capacity() * sizeof(float));
  }
  return b;
}

}  // namespace mergeserve
