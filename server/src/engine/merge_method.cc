#include "mergeserve/engine/merge_method.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace mergeserve {

absl::Status NonFiniteError(const std::string& tensor,
                            const std::string& model_ref) {
  return absl::InvalidArgumentError(
      absl::StrCat("tensor '", tensor, "' of model '", model_ref,
                   "' contains NaN or Inf; refusing to merge it"));
}

bool AllFinite(const float* v, int64_t n) {
  // Exponent all ones means Inf or NaN; OR-reduce so the loop vectorises.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, v + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

void ForEachChunkWindowed(
    ThreadPool& pool, int64_t numel, int64_t chunk,
    const std::function<void(int64_t, int)>& fn,
    const std::function<void(int64_t, int64_t)>& after_window,
    const std::function<void(int64_t, int64_t)>& before_window) {
  // 4M elements per window: 8 MiB per bf16 model in flight.
  const int64_t per_window = std::max<int64_t>(1, (int64_t{4} << 20) / chunk);
  const int64_t nchunks = (numel + chunk - 1) / chunk;
  for (int64_t first = 0; first < nchunks; first += per_window) {
    const int64_t n = std::min(per_window, nchunks - first);
    const int64_t begin = first * chunk;
    const int64_t count = std::min(numel, (first + n) * chunk) - begin;
    if (before_window) before_window(begin, count);
    pool.Run(n, [&](int64_t i, int w) { fn(first + i, w); });
    after_window(begin, count);
  }
}

namespace {

inline uint32_t NonFinite(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
}

// One templated loop per dtype so the compiler can vectorise the convert,
// check and subtract together.
template <typename Load>
bool DeltaLoop(const uint8_t* src, int64_t n, const float* base, float* dst,
               Load load) {
  uint32_t bad = 0;
  if (base != nullptr) {
    for (int64_t j = 0; j < n; ++j) {
      const float x = load(src, j);
      bad |= NonFinite(x);
      dst[j] = x - base[j];
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const float x = load(src, j);
      bad |= NonFinite(x);
      dst[j] = x;
    }
  }
  return bad == 0;
}

}  // namespace

bool LoadDelta(const TensorView& v, int64_t begin, int64_t count,
               const float* base, float* dst) {
  const size_t es = DTypeSize(v.info->dtype);
  const uint8_t* src = v.data + static_cast<size_t>(begin) * es;
  switch (v.info->dtype) {
    case DType::kBF16:
      return DeltaLoop(src, count, base, dst, [](const uint8_t* p, int64_t j) {
        uint16_t h;
        std::memcpy(&h, p + 2 * j, 2);
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
      });
    case DType::kF32:
      return DeltaLoop(src, count, base, dst, [](const uint8_t* p, int64_t j) {
        float f;
        std::memcpy(&f, p + 4 * j, 4);
        return f;
      });
    default:
      // F16/F64: convert first, then check and subtract.
      LoadAsF32(v.info->dtype, src, count, dst);
      return DeltaLoop(reinterpret_cast<const uint8_t*>(dst), count, base, dst,
                       [](const uint8_t* p, int64_t j) {
                         float f;
                         std::memcpy(&f, p + 4 * j, 4);
                         return f;
                       });
  }
}

}  // namespace mergeserve
