#include "mergeserve/base/exit_codes.h"

#include <map>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace mergeserve {
namespace {

// The table scripts rely on (both binaries use it; README lists it).
TEST(ExitCodesTest, EveryStatusCodeHasItsDocumentedExitCode) {
  const std::map<absl::StatusCode, int> kTable = {
      {absl::StatusCode::kOk, 0},
      {absl::StatusCode::kCancelled, 10},
      {absl::StatusCode::kUnknown, 1},
      {absl::StatusCode::kInvalidArgument, 2},
      {absl::StatusCode::kDeadlineExceeded, 8},
      {absl::StatusCode::kNotFound, 3},
      {absl::StatusCode::kAlreadyExists, 5},
      {absl::StatusCode::kPermissionDenied, 6},
      {absl::StatusCode::kResourceExhausted, 9},
      {absl::StatusCode::kFailedPrecondition, 7},
      {absl::StatusCode::kAborted, 10},
      {absl::StatusCode::kOutOfRange, 2},
      {absl::StatusCode::kUnimplemented, 1},
      {absl::StatusCode::kInternal, 1},
      {absl::StatusCode::kUnavailable, 8},
      {absl::StatusCode::kDataLoss, 4},
      {absl::StatusCode::kUnauthenticated, 11},
  };
  ASSERT_EQ(kTable.size(), 17u);  // every canonical code, 0-16
  for (const auto& [code, exit] : kTable) {
    EXPECT_EQ(ExitCodeFor(code), exit) << absl::StatusCodeToString(code);
    // gRPC's numeric codes are the canonical ones (mergectl passes them).
    EXPECT_EQ(ExitCodeFor(static_cast<int>(code)), exit);
  }
  EXPECT_EQ(ExitCodeFor(99), 1);  // a code from a newer peer
}

TEST(ExitCodesTest, HelpNamesEveryExitCode) {
  const std::string help = ExitCodeHelp();
  for (const char* entry :
       {"0 ok", "2 invalid argument", "3 not found", "4 data loss",
        "5 already exists", "6 permission denied", "7 failed precondition",
        "8 server unavailable", "9 queue full", "10 cancelled",
        "11 unauthenticated", "1 other"}) {
    EXPECT_NE(help.find(entry), std::string::npos) << entry;
  }
}

}  // namespace
}  // namespace mergeserve
