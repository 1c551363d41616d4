#include "mergeserve/base/clock.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(ClockTest, FormatsUtcTimesAndNever) {
  EXPECT_EQ(FormatUtcTime(0), "-");
  EXPECT_EQ(FormatUtcTime(1000000000000), "2001-09-09T01:46:40Z");
  EXPECT_EQ(FormatUtcTime(1000000000999), "2001-09-09T01:46:40Z");
  EXPECT_EQ(FormatUtcTime(1), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatUtcTime(NowMs()).size(), 20u);
}

TEST(ClockTest, ParsesDurationsWithUnits) {
  EXPECT_EQ(*ParseDurationMs("45"), 45000);
  EXPECT_EQ(*ParseDurationMs("45s"), 45000);
  EXPECT_EQ(*ParseDurationMs("90m"), 90 * 60 * 1000);
  EXPECT_EQ(*ParseDurationMs("12h"), 12 * 3600 * 1000);
  EXPECT_EQ(*ParseDurationMs("30d"), int64_t{30} * 86400 * 1000);
  EXPECT_EQ(*ParseDurationMs("0"), 0);
  EXPECT_EQ(*ParseDurationMs("36500d"), kMaxDurationMs);
  for (const char* bad : {"", "d", "soon", "-3d", "1.5h", "1 d", "1w", "3D",
                          "1000000000000", "10s5"}) {
    EXPECT_EQ(ParseDurationMs(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

// Twelve digits of days, hours or seconds used to overflow int64 ms (and a
// token's create time plus that): anything past 100 years is refused.
TEST(ClockTest, RefusesDurationsPastAHundredYears) {
  for (const char* long_ones :
       {"36501d", "999999999999d", "999999999999h", "876001h", "999999999999m",
        "999999999999s", "999999999999"}) {
    auto d = ParseDurationMs(long_ones);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument)
        << long_ones;
    EXPECT_NE(d.status().message().find("100 years"), std::string::npos)
        << long_ones;
  }
  EXPECT_EQ(*ParseDurationMs("876000h"), kMaxDurationMs);
  EXPECT_EQ(*ParseDurationMs("3153600000s"), kMaxDurationMs);
}

}  // namespace
}  // namespace mergeserve
