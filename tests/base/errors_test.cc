#include "mergeserve/base/errors.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

// The code is what a client acts on: retry elsewhere or free space
// (RESOURCE_EXHAUSTED), fix the path (NOT_FOUND), the permissions
// (PERMISSION_DENIED), or report a bug (INTERNAL).
TEST(ErrorsTest, ErrnoMapsToTheCodeACallerCanActOn) {
  const struct {
    int err;
    absl::StatusCode code;
  } kCases[] = {
      {ENOSPC, absl::StatusCode::kResourceExhausted},
      {EDQUOT, absl::StatusCode::kResourceExhausted},
      {EFBIG, absl::StatusCode::kResourceExhausted},
      {ENOENT, absl::StatusCode::kNotFound},
      {EACCES, absl::StatusCode::kPermissionDenied},
      {EPERM, absl::StatusCode::kPermissionDenied},
      {EROFS, absl::StatusCode::kPermissionDenied},
      {EIO, absl::StatusCode::kInternal},
      {EBADF, absl::StatusCode::kInternal},
  };
  for (const auto& c : kCases) {
    const absl::Status s = ErrnoStatus(c.err, "writing shard-1.safetensors");
    EXPECT_EQ(s.code(), c.code) << std::strerror(c.err);
    // The message names the thing and the system's reason.
    EXPECT_NE(s.message().find("writing shard-1.safetensors: "),
              std::string::npos);
    EXPECT_NE(s.message().find(std::strerror(c.err)), std::string::npos);
  }
  EXPECT_NE(ErrnoStatus(ENOSPC, "x").message().find("disk is full"),
            std::string::npos);
}

TEST(ErrorsTest, AbbreviateKeepsShortTextAndCutsLongText) {
  EXPECT_EQ(Abbreviate("expert-7"), "expert-7");
  EXPECT_EQ(Abbreviate(std::string(64, 'a')), std::string(64, 'a'));
  const std::string cut = Abbreviate(std::string(10000, 'n'));
  EXPECT_EQ(cut, std::string(64, 'n') + "... (10000 bytes)");
  EXPECT_EQ(Abbreviate("abcdef", 3), "abc... (6 bytes)");
  EXPECT_EQ(Abbreviate("abcdef", 0), "... (6 bytes)");
}

// A cut never splits a UTF-8 sequence, so the message stays valid UTF-8
// (gRPC status messages must be).
TEST(ErrorsTest, AbbreviateCutsAtAUtf8Boundary) {
  // 63 ASCII bytes, then "é" (2 bytes) across the 64-byte limit.
  const std::string text = std::string(63, 'a') + "\xc3\xa9" + "zzz";
  EXPECT_EQ(Abbreviate(text), std::string(63, 'a') + "... (68 bytes)");
  // A 4-byte sequence starting at 62: the cut backs up to it.
  const std::string emoji = std::string(62, 'a') + "\xf0\x9f\x99\x82" + "z";
  EXPECT_EQ(Abbreviate(emoji), std::string(62, 'a') + "... (67 bytes)");
  // Starting exactly at the limit: nothing to back over.
  const std::string at = std::string(64, 'a') + "\xc3\xa9";
  EXPECT_EQ(Abbreviate(at), std::string(64, 'a') + "... (66 bytes)");
}

}  // namespace
}  // namespace mergeserve
