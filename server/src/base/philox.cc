#include "mergeserve/base/philox.h"

#include "mergeserve/base/cpu_dispatch.h"

namespace mergeserve {

// A loop the compiler vectorises across blocks: the 32x32->64 multiplies
// become pmuludq (eight lanes with AVX-512).
MS_CPU_DISPATCH void PhiloxUniformBlocks(std::array<uint32_t, 2> key,
                                         uint32_t c2, uint32_t c3,
                                         uint64_t first, int64_t blocks,
                                         float* __restrict out) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint64_t block = first + static_cast<uint64_t>(b);
    uint32_t x0 = static_cast<uint32_t>(block);
    uint32_t x1 = static_cast<uint32_t>(block >> 32);
    uint32_t x2 = c2, x3 = c3;
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(kM0) * x0;
      const uint64_t p1 = static_cast<uint64_t>(kM1) * x2;
      const uint32_t y0 = static_cast<uint32_t>(p1 >> 32) ^ x1 ^ k0;
      const uint32_t y2 = static_cast<uint32_t>(p0 >> 32) ^ x3 ^ k1;
      x1 = static_cast<uint32_t>(p1);
      x3 = static_cast<uint32_t>(p0);
      x0 = y0;
      x2 = y2;
      k0 += kW0;
      k1 += kW1;
    }
    out[4 * b] = static_cast<float>(x0 >> 8) * 0x1.0p-24f;
    out[4 * b + 1] = static_cast<float>(x1 >> 8) * 0x1.0p-24f;
    out[4 * b + 2] = static_cast<float>(x2 >> 8) * 0x1.0p-24f;
    out[4 * b + 3] = static_cast<float>(x3 >> 8) * 0x1.0p-24f;
  }
}

}  // namespace mergeserve
