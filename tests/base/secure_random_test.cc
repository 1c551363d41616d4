#include "mergeserve/base/secure_random.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(SecureRandomTest, HexOfTheRequestedLengthAndNeverRepeated) {
  std::set<std::string> seen;
  for (int i = 0; i < 100; ++i) {
    auto hex = SecureRandomHex(16);
    ASSERT_TRUE(hex.ok()) << hex.status();
    ASSERT_EQ(hex->size(), 32u);
    EXPECT_EQ(hex->find_first_not_of("0123456789abcdef"), std::string::npos)
        << *hex;
    seen.insert(*hex);
  }
  EXPECT_EQ(seen.size(), 100u);  // 128-bit values do not collide
  EXPECT_EQ(*SecureRandomHex(0), "");
  EXPECT_EQ(SecureRandomHex(1000)->size(), 2000u);
}

TEST(SecureRandomTest, ConstantTimeEqualsComparesWholeStrings) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("mst_abc_123", "mst_abc_123"));
  EXPECT_FALSE(ConstantTimeEquals("mst_abc_123", "mst_abc_124"));
  EXPECT_FALSE(ConstantTimeEquals("xst_abc_123", "mst_abc_123"));
  EXPECT_FALSE(ConstantTimeEquals("mst_abc_123", "mst_abc_1234"));
  EXPECT_FALSE(ConstantTimeEquals("mst_abc_123", ""));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0b", 3), "a"));
}

}  // namespace
}  // namespace mergeserve
