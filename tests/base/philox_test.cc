#include "mergeserve/base/philox.h"

#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

// Random123's known answer for Philox4x32-10 with zero counter and key.
TEST(PhiloxTest, KnownAnswer) {
  const auto r = Philox4x32({0, 0, 0, 0}, {0, 0});
  EXPECT_EQ(r[0], 0x6627e8d5u);
  EXPECT_EQ(r[1], 0xe169c58du);
  EXPECT_EQ(r[2], 0xbc57ac4cu);
  EXPECT_EQ(r[3], 0x9b00dbd8u);
}

// Fill's whole-block loop (sixteen blocks at a time with AVX-512, eight with
// AVX2, stopping short of a wrap of the counter's low word) and its
// per-block path give the same uniforms for every alignment of begin and
// count, including counters past 2^32 blocks, with every kernel set.
TEST(PhiloxTest, FillIsTheSameWhateverTheRange) {
  testing::ForEachKernelSet([](KernelSet) {
    const ElementRandom rng(0x123456789abcull, "model.layers.0.w", 3);
    for (int64_t origin : {int64_t{0}, (int64_t{1} << 34) - 9}) {
      const int64_t n = 203;
      std::vector<float> reference(n);
      for (int64_t j = 0; j < n; ++j) rng.Fill(origin + j, 1, &reference[j]);
      for (int64_t begin = 0; begin < 9; ++begin) {
        for (int64_t count : {0, 1, 3, 4, 5, 17, 64, 190}) {
          std::vector<float> out(static_cast<size_t>(count), -1.f);
          rng.Fill(origin + begin, count, out.data());
          for (int64_t j = 0; j < count; ++j) {
            ASSERT_EQ(out[j], reference[begin + j])
                << "origin " << origin << " begin " << begin << " count "
                << count << " j " << j;
          }
        }
      }
      for (float u : reference) {
        EXPECT_GE(u, 0.f);
        EXPECT_LT(u, 1.f);
      }
    }
  });
}

}  // namespace
}  // namespace mergeserve
