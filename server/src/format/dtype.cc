#include "mergeserve/format/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "mergeserve/base/cpu_dispatch.h"

namespace mergeserve {
namespace {

MS_CPU_DISPATCH void StoreBf16(const float* __restrict src, int64_t count,
                               unsigned char* __restrict dst) {
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t h = F32ToBf16(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

// Whether any of n 16-bit values has all of `mask`'s bits: no early exit, so
// it vectorises; FindNonFinite scans a block only once it knows one is there.
MS_CPU_DISPATCH bool AnyAll16(const uint16_t* __restrict p, int64_t n,
                              uint16_t mask) {
  uint16_t hit = 0;
  for (int64_t i = 0; i < n; ++i) hit |= (p[i] & mask) == mask;
  return hit != 0;
}

MS_CPU_DISPATCH bool AnyAll32(const uint32_t* __restrict p, int64_t n,
                              uint32_t mask) {
  uint32_t hit = 0;
  for (int64_t i = 0; i < n; ++i) hit |= (p[i] & mask) == mask;
  return hit != 0;
}

constexpr int64_t kScanBlock = 4096;

struct DTypeEntry {
  DType type;
  std::string_view name;
  std::string_view torch_name;
  size_t size;
};

constexpr DTypeEntry kTable[] = {
    {DType::kBool, "BOOL", "bool", 1},
    {DType::kU8, "U8", "uint8", 1},
    {DType::kI8, "I8", "int8", 1},
    {DType::kI16, "I16", "int16", 2},
    {DType::kU16, "U16", "uint16", 2},
    {DType::kI32, "I32", "int32", 4},
    {DType::kU32, "U32", "uint32", 4},
    {DType::kI64, "I64", "int64", 8},
    {DType::kU64, "U64", "uint64", 8},
    {DType::kF8E4M3, "F8_E4M3", "float8_e4m3fn", 1},
    {DType::kF8E5M2, "F8_E5M2", "float8_e5m2", 1},
    {DType::kF16, "F16", "float16", 2},
    {DType::kBF16, "BF16", "bfloat16", 2},
    {DType::kF32, "F32", "float32", 4},
    {DType::kF64, "F64", "float64", 8},
};

const DTypeEntry& Entry(DType t) { return kTable[static_cast<int>(t)]; }

}  // namespace

std::string_view DTypeName(DType t) { return Entry(t).name; }
std::string_view TorchDTypeName(DType t) { return Entry(t).torch_name; }
size_t DTypeSize(DType t) { return Entry(t).size; }

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const auto& e : kTable) {
    if (e.name == name) return e.type;
  }
  return std::nullopt;
}

std::optional<DType> DTypeFromConfigName(std::string_view name) {
  std::string n(name);
  for (auto& c : n) c = static_cast<char>(std::tolower(c));
  if (n == "bfloat16" || n == "bf16") return DType::kBF16;
  if (n == "float16" || n == "fp16" || n == "f16" || n == "half")
    return DType::kF16;
  if (n == "float32" || n == "fp32" || n == "f32" || n == "float")
    return DType::kF32;
  if (n == "float64" || n == "fp64" || n == "f64" || n == "double")
    return DType::kF64;
  return std::nullopt;
}

bool IsMergeable(DType t) {
  return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32 ||
         t == DType::kF64;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf
  if (abs < 0x38800000u) {                        // result is subnormal or zero
    // Shift the implicit-1 mantissa into place with RNE.
    const int e = static_cast<int>(abs >> 23);
    if (e < 102) return sign;  // below half the smallest subnormal
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - e;  // value / 2^-24 = m * 2^(e - 126)
    const uint32_t half = 1u << (shift - 1);
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

void LoadAsF32(DType src_type, const void* src, int64_t count, float* dst) {
  switch (src_type) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(count) * 4);
      return;
    case DType::kBF16: {
      const auto* p = static_cast<const unsigned char*>(src);
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = Bf16ToF32(h);
      }
      return;
    }
    case DType::kF16: {
      const auto* p = static_cast<const unsigned char*>(src);
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = F16ToF32(h);
      }
      return;
    }
    case DType::kF64: {
      const auto* p = static_cast<const unsigned char*>(src);
      for (int64_t i = 0; i < count; ++i) {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return;
    }
    default:
      break;
  }
}

void StoreFromF32(const float* src, int64_t count, DType dst_type, void* dst) {
  auto* p = static_cast<unsigned char*>(dst);
  switch (dst_type) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(count) * 4);
      return;
    case DType::kBF16:
      StoreBf16(src, count, p);
      return;
    case DType::kF16:
      for (int64_t i = 0; i < count; ++i) {
        const uint16_t h = F32ToF16(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return;
    case DType::kF64:
      for (int64_t i = 0; i < count; ++i) {
        const double d = src[i];
        std::memcpy(p + 8 * i, &d, 8);
      }
      return;
    default:
      break;
  }
}

int64_t FindNonFinite(const void* data, int64_t count, DType dtype) {
  // All-ones exponent means infinity or NaN in every IEEE-like format.
  auto scan16 = [&](uint16_t mask) -> int64_t {
    const auto* p = static_cast<const uint16_t*>(data);
    for (int64_t b = 0; b < count; b += kScanBlock) {
      const int64_t n = std::min(kScanBlock, count - b);
      if (!AnyAll16(p + b, n, mask)) continue;
      for (int64_t i = b; i < b + n; ++i) {
        if ((p[i] & mask) == mask) return i;
      }
    }
    return -1;
  };
  switch (dtype) {
    case DType::kBF16:
      return scan16(0x7f80);
    case DType::kF16:
      return scan16(0x7c00);
    case DType::kF32: {
      const auto* p = static_cast<const uint32_t*>(data);
      for (int64_t b = 0; b < count; b += kScanBlock) {
        const int64_t n = std::min(kScanBlock, count - b);
        if (!AnyAll32(p + b, n, 0x7f800000u)) continue;
        for (int64_t i = b; i < b + n; ++i) {
          if ((p[i] & 0x7f800000u) == 0x7f800000u) return i;
        }
      }
      return -1;
    }
    case DType::kF64: {
      const auto* p = static_cast<const uint64_t*>(data);
      for (int64_t i = 0; i < count; ++i) {
        if ((p[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull) return i;
      }
      return -1;
    }
    default:
      return -1;
  }
}

}  // namespace mergeserve
