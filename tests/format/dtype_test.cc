#include "mergeserve/format/dtype.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

TEST(DTypeTest, NamesRoundTrip) {
  for (const char* n :
       {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F8_E4M3",
        "F8_E5M2", "F16", "BF16", "F32", "F64"}) {
    auto t = DTypeFromName(n);
    ASSERT_TRUE(t.has_value()) << n;
    EXPECT_EQ(DTypeName(*t), n);
  }
  EXPECT_FALSE(DTypeFromName("F12").has_value());
  EXPECT_EQ(DTypeFromConfigName("bfloat16"), DType::kBF16);
  EXPECT_EQ(DTypeFromConfigName("float32"), DType::kF32);
  EXPECT_FALSE(DTypeFromConfigName("int4").has_value());
  EXPECT_TRUE(IsMergeable(DType::kBF16));
  EXPECT_FALSE(IsMergeable(DType::kI64));
  EXPECT_FALSE(IsMergeable(DType::kF8E4M3));
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  // Exactly halfway between two bf16 values: ties go to the even mantissa.
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808000u)), 0x3f80);  // 1.00390625 -> 1.0
  EXPECT_EQ(F32ToBf16(FromBits(0x3f818000u)), 0x3f82);  // odd -> up
  EXPECT_EQ(F32ToBf16(FromBits(0x3f808001u)), 0x3f81);  // above half -> up
  EXPECT_EQ(F32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bits(Bf16ToF32(0x3f80)), Bits(1.0f));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::nanf("")))));
  EXPECT_EQ(F32ToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
}

TEST(DTypeTest, F16ConversionsAreExactAndRoundToNearestEven) {
  // Every f16 value survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    const float f = F16ToF32(x);
    if (std::isnan(f)) continue;
    EXPECT_EQ(F32ToF16(f), x) << std::hex << h;
  }
  EXPECT_EQ(F32ToF16(65520.f), 0x7c00);  // rounds to inf
  EXPECT_EQ(F32ToF16(65504.f), 0x7bff);
  EXPECT_EQ(F32ToF16(std::ldexp(1.f, -25)), 0x0000);  // half ulp of 2^-24: even
  EXPECT_EQ(F32ToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(3.f, -11)), 0x3c02);
}

TEST(DTypeTest, LoadAndStoreConvertSpans) {
  const float in[] = {1.5f, -2.25f, 0.f, 3.0e-3f};
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    std::vector<unsigned char> buf(4 * DTypeSize(t));
    StoreFromF32(in, 4, t, buf.data());
    float out[4];
    LoadAsF32(t, buf.data(), 4, out);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], in[i]) << DTypeName(t);
    EXPECT_NEAR(out[3], in[3], 2e-5) << DTypeName(t);
  }
}

}  // namespace
}  // namespace mergeserve
