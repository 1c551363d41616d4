#include "mergeserve/base/huge_buffer.h"

#include <cstdint>
#include <utility>

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

}  // namespace
}  // namespace mergeserve
