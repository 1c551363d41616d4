#include "mergeserve/store/page_token.h"

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"

namespace mergeserve {
namespace {

TEST(PageTokenTest, KeysRoundTripThroughAnOpaqueWebSafeToken) {
  const std::vector<std::vector<std::string>> keys = {
      {"1764979009000", "job-1a2b"},
      {"llama-base"},
      {"", ""},  // empty fields survive
      {"a b/c+d=e", "\xc3\xa9"},
  };
  for (const auto& key : keys) {
    const std::string token = EncodePageToken(key);
    // Web-safe base64: a token goes into URLs and CLI flags unquoted.
    EXPECT_EQ(token.find_first_of("+/ \n"), std::string::npos) << token;
    auto back = DecodePageToken(token, key.size());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, key);
  }
}

// A token the server did not make, or one of a list with other sort keys,
// is INVALID_ARGUMENT (the API guide's answer), never a crash or a silent
// first page.
TEST(PageTokenTest, ForeignTamperedAndOversizedTokensAreRefused) {
  const std::string two = EncodePageToken({"1", "job-1"});
  const std::vector<std::string> bad = {
      "not base64!",
      absl::WebSafeBase64Escape("v2\n1\njob-1"),  // another version
      absl::WebSafeBase64Escape("1\njob-1"),      // no version
      two.substr(0, 3),                           // cut inside the version
      std::string(5000, 'A'),                     // over 4 KiB
  };
  for (const std::string& token : bad) {
    auto key = DecodePageToken(token, 2);
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument)
        << token.substr(0, 40);
    EXPECT_EQ(key.status().message(), "invalid page_token");
  }
  // Another list's token: the number of key fields differs.
  EXPECT_EQ(DecodePageToken(two, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodePageToken(EncodePageToken({"x"}), 2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PageTokenTest, PageSizesFallBackAndAreCapped) {
  EXPECT_EQ(ClampPageSize(0, 50, 1000), 50);
  EXPECT_EQ(ClampPageSize(-7, 50, 1000), 50);
  EXPECT_EQ(ClampPageSize(20, 50, 1000), 20);
  EXPECT_EQ(ClampPageSize(1000, 50, 1000), 1000);
  EXPECT_EQ(ClampPageSize(1 << 30, 50, 1000), 1000);
}

}  // namespace
}  // namespace mergeserve
