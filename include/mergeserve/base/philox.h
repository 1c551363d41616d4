// Philox4x32-10 counter-based random numbers (Salmon et al., SC'11).
//
// DARE/DELLA draw one uniform per (seed, tensor, model, element): the stream
// is a pure function of those keys, so output is bit-identical whatever the
// thread count, chunking, device or processing order.
#ifndef MERGESERVE_BASE_PHILOX_H_
#define MERGESERVE_BASE_PHILOX_H_

#include <array>
#include <cstdint>
#include <string_view>

namespace mergeserve {

inline std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> ctr,
                                          std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kM1) * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0],
           static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1],
           static_cast<uint32_t>(p0)};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

// 64-bit FNV-1a, used to fold a tensor name into the counter.
inline uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Uniform floats in [0, 1) with 24 random bits, four per Philox block.
class ElementRandom {
 public:
  ElementRandom(uint64_t seed, std::string_view tensor_name, int model_index)
      : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
        name_hash_(Fnv1a64(tensor_name)),
        model_(static_cast<uint32_t>(model_index)) {}

  // Fills out[0..count) with the uniforms of elements begin..begin+count.
  void Fill(int64_t begin, int64_t count, float* out) const {
    int64_t i = begin;
    const int64_t end = begin + count;
    // The block holding element i, from lane i & 3 to its end (or `end`).
    auto one_block = [&] {
      const uint64_t block = static_cast<uint64_t>(i) >> 2;
      const auto r = Philox4x32(
          {static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
           static_cast<uint32_t>(name_hash_) ^ model_,
           static_cast<uint32_t>(name_hash_ >> 32)},
          key_);
      for (int lane = static_cast<int>(i & 3); lane < 4 && i < end;
           ++lane, ++i) {
        out[i - begin] = static_cast<float>(r[lane] >> 8) * 0x1.0p-24f;
      }
    };
    if (i < end && (i & 3) != 0) one_block();
    // Whole blocks in bulk (PhiloxUniformBlocks); the same numbers.
    const int64_t blocks = (end - i) >> 2;
    if (blocks > 0) {
      FillBlocks(static_cast<uint64_t>(i) >> 2, blocks, out + (i - begin));
      i += blocks * 4;
    }
    while (i < end) one_block();
  }

 private:
  void FillBlocks(uint64_t first, int64_t blocks, float* out) const;

  std::array<uint32_t, 2> key_;
  uint64_t name_hash_;
  uint32_t model_;
};

// Philox uniforms of `blocks` whole blocks from block `first` (counter words
// 2 and 3 fixed at c2, c3), four floats per block: ElementRandom's bulk path,
// compiled per CPU (base/cpu_dispatch.h); the same numbers as Philox4x32.
void PhiloxUniformBlocks(std::array<uint32_t, 2> key, uint32_t c2, uint32_t c3,
                         uint64_t first, int64_t blocks, float* out);

inline void ElementRandom::FillBlocks(uint64_t first, int64_t blocks,
                                      float* out) const {
  PhiloxUniformBlocks(key_, static_cast<uint32_t>(name_hash_) ^ model_,
                      static_cast<uint32_t>(name_hash_ >> 32), first, blocks,
                      out);
}

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_PHILOX_H_
