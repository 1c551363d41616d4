#include "methods/sparse_task_vector.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

// Every chunk comes back as packed (zeros for what was not kept), in any
// packing order, with a short last chunk and a chunk with nothing kept.
TEST(SparseTaskVectorTest, UnpacksWhatWasPacked) {
  testing::ForEachKernelSet([](KernelSet) {
    const int64_t numel = 1000, chunk = 130;  // not a multiple of 64 either
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> tv(numel);
    for (int64_t i = 0; i < numel; ++i) {
      const float x = u(rng);
      tv[i] = std::abs(x) < 0.6f ? 0.f : x;  // about 40% kept
    }
    // Negative zeros are zeros: not kept, and they come back as +0.
    for (int64_t i = 7; i < numel; i += 11) tv[i] = -0.f;
    std::fill(tv.begin() + 260, tv.begin() + 390, 0.f);    // chunk 2: none
    for (int64_t i = 390; i < 520; ++i) tv[i] = 0.5f + i;  // chunk 3: all
    SparseTaskVector s(numel, chunk);
    const int64_t chunks = (numel + chunk - 1) / chunk;
    for (int64_t ci = chunks - 1; ci >= 0; --ci) {
      const int64_t cnt = std::min(chunk, numel - ci * chunk);
      s.Pack(ci, tv.data() + ci * chunk, cnt);
    }
    std::vector<float> back(chunk, 7.f);
    for (int64_t ci = 0; ci < chunks; ++ci) {
      const int64_t cnt = std::min(chunk, numel - ci * chunk);
      s.Unpack(ci, cnt, back.data());
      for (int64_t j = 0; j < cnt; ++j) {
        ASSERT_EQ(back[j], tv[ci * chunk + j]) << ci << " " << j;
        ASSERT_FALSE(back[j] == 0.f && std::signbit(back[j])) << ci << " " << j;
      }
    }
    // Bits plus about 40% of the values: well under the dense 4 bytes each.
    EXPECT_LT(s.bytes(), numel * 4);
    EXPECT_GT(s.bytes(), numel * 4 / 4);
  });
}

}  // namespace
}  // namespace mergeserve
