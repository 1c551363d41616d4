#include "mergeserve/base/byte_size.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(ByteSizeTest, ParsesDecimalAndBinaryUnits) {
  const struct {
    const char* text;
    int64_t bytes;
  } kCases[] = {
      {"4096", 4096},
      {"0", 0},
      {"12B", 12},
      {"2k", 2000},
      {"2KB", 2000},
      {"2KiB", 2048},
      {"512MiB", int64_t{512} << 20},
      {"512mb", 512000000},
      {"2GB", 2000000000},
      {"1.5G", 1500000000},
      {"1GiB", int64_t{1} << 30},
      {"3TiB", int64_t{3} << 40},
      {"1T", 1000000000000},
      {"  1 KiB  ", 1024},  // spaces around and before the unit
      {"0.5KiB", 512},
      {"2.5B", 3},  // rounds to the nearest byte
      {"9000000000GB", int64_t{9000000000} * 1000000000},
  };
  for (const auto& c : kCases) {
    auto b = ParseByteSize(c.text);
    ASSERT_TRUE(b.ok()) << c.text << ": " << b.status();
    EXPECT_EQ(*b, c.bytes) << c.text;
  }
}

TEST(ByteSizeTest, RefusesWhatIsNotASize) {
  for (const char* text : {"", "GiB", "abc", "-1", "-1GB", "1XB", "1 GiB extra",
                           "1e9", "1..5", ".", "10000000000GB", "1PiB"}) {
    auto b = ParseByteSize(text);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
  // The message quotes what was typed.
  EXPECT_NE(ParseByteSize("12XB").status().message().find("12XB"),
            std::string::npos);
}

TEST(ByteSizeTest, FormatsInBinaryUnitsAndParsesBack) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(int64_t{321} << 20), "321.0 MiB");
  EXPECT_EQ(FormatBytes(int64_t{5} << 30), "5.0 GiB");
  EXPECT_EQ(FormatBytes(int64_t{2048} << 40), "2048.0 TiB");  // no PiB
  for (int64_t b : {int64_t{1536}, int64_t{5} << 30, int64_t{3} << 40}) {
    auto back = ParseByteSize(FormatBytes(b));
    ASSERT_TRUE(back.ok()) << FormatBytes(b);
    EXPECT_EQ(*back, b);
  }
}

}  // namespace
}  // namespace mergeserve
