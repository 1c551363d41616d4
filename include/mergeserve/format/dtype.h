// safetensors element types and exact conversions to and from fp32.
#ifndef MERGESERVE_FORMAT_DTYPE_H_
#define MERGESERVE_FORMAT_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace mergeserve {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2,
  kF16,
  kBF16,
  kF32,
  kF64,
};

// The safetensors spelling ("F32", "BF16", ...).
std::string_view DTypeName(DType t);
std::optional<DType> DTypeFromName(std::string_view name);
// Also accepts the torch/mergekit spellings used in configs ("bfloat16",
// "float16", "float32", "fp32", ...).
std::optional<DType> DTypeFromConfigName(std::string_view name);
// "bfloat16" etc., for config.json's torch_dtype.
std::string_view TorchDTypeName(DType t);

size_t DTypeSize(DType t);
// Types the engine merges (converted to fp32 for the math). Everything else,
// including fp8, is copied unchanged from the base model.
bool IsMergeable(DType t);

inline float Bf16ToF32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40u);
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts count elements of src (mergeable dtype) to fp32.
void LoadAsF32(DType src_type, const void* src, int64_t count, float* dst);
// Converts count fp32 values to dst_type (mergeable dtype), rounding to
// nearest even.
void StoreFromF32(const float* src, int64_t count, DType dst_type, void* dst);

// Index of the first NaN or infinity among `count` values of a floating
// dtype stored at `data` (after rounding to that dtype, so a value that
// overflows float16 counts), or -1 when all are finite or the dtype is not
// floating.
int64_t FindNonFinite(const void* data, int64_t count, DType dtype);

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_DTYPE_H_
