#include "mergeserve/base/huge_buffer.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(HugeBufferTest, ZeroFilledAndSizedByPage) {
  HugeBuffer small(10000);
  EXPECT_EQ(small.size(), 10000u);
  EXPECT_EQ(small.mapped(), 12288u);  // 4 KiB pages under 2 MiB
  for (size_t i = 0; i < small.size(); ++i) {
    ASSERT_EQ(small.as<uint8_t>()[i], 0) << i;
  }
  HugeBuffer large((size_t{2} << 20) + 1);
  EXPECT_EQ(large.mapped(), size_t{4} << 20);  // whole huge pages
  large.as<uint8_t>()[large.size() - 1] = 7;
  HugeBuffer moved = std::move(large);
  EXPECT_EQ(large.data(), nullptr);
  EXPECT_EQ(moved.as<uint8_t>()[moved.size() - 1], 7);
  HugeBuffer empty(0);
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.mapped(), 0u);
}

TEST(HugeBufferTest, UninitializedBuffersReuseFreedMappingsOfTheirSize) {
  HugeBuffer::ReleasePool();                 // whatever other tests left
  const size_t mb3 = (size_t{3} << 20) - 5;  // maps 4 MiB
  void* first = nullptr;
  {
    HugeBuffer a = HugeBuffer::Uninitialized(mb3);
    first = a.data();
    a.as<uint8_t>()[0] = 42;
  }  // back to the pool, not to the kernel
  EXPECT_GE(HugeBuffer::PooledBytes(), size_t{4} << 20);
  {
    HugeBuffer other = HugeBuffer::Uninitialized(size_t{6} << 20);
    EXPECT_NE(other.data(), first);  // another size maps anew
  }
  HugeBuffer again = HugeBuffer::Uninitialized(mb3);
  EXPECT_EQ(again.data(), first);
  EXPECT_EQ(again.as<uint8_t>()[0], 42);  // not zeroed: the point of it
  EXPECT_EQ(again.size(), mb3);
  // The zero-filled constructor never hands out a pooled mapping, and its
  // memory goes back to the kernel, not to the pool.
  HugeBuffer zeroed(mb3);
  EXPECT_NE(zeroed.data(), first);
  EXPECT_EQ(zeroed.as<uint8_t>()[0], 0);
  const size_t before = HugeBuffer::PooledBytes();
  zeroed = HugeBuffer();
  EXPECT_EQ(HugeBuffer::PooledBytes(), before);
}

TEST(HugeBufferTest, ThePoolIsBounded) {
  std::vector<HugeBuffer> many;
  const size_t each = size_t{64} << 20;
  for (size_t i = 0; i < HugeBuffer::kPoolBytes / each + 4; ++i) {
    many.push_back(HugeBuffer::Uninitialized(each));
  }
  many.clear();
  EXPECT_LE(HugeBuffer::PooledBytes(), HugeBuffer::kPoolBytes);
  EXPECT_GE(HugeBuffer::PooledBytes(), HugeBuffer::kPoolBytes - each);
  HugeBuffer::ReleasePool();
  EXPECT_EQ(HugeBuffer::PooledBytes(), 0u);
}

}  // namespace
}  // namespace mergeserve
