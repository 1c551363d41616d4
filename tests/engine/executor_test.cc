// The executor's hooks for the server.
#include "mergeserve/engine/executor.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

// The server's fencing hook: a merge whose hook refuses at the end commits
// nothing (no output folder, no temporary left), and one it allows commits.
TEST(BeforeCommitTest, ARefusedCommitLeavesNothingBehind) {
  const std::string dir = testing::TempDir("before-commit");
  testing::WriteModel(dir + "/base", {{"w", {{4}, {1, 2, 3, 4}}}});
  testing::WriteModel(dir + "/e0", {{"w", {{4}, {2, 2, 2, 2}}}});
  const std::string yaml =
      "merge_method: task_arithmetic\nbase_model: base\nmodels: [e0]\n";
  int calls = 0;
  MergeOptions refuse;
  refuse.before_commit = [&calls] {
    ++calls;
    return absl::AbortedError("lease lost");
  };
  auto out = testing::Merge(dir, yaml, refuse);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(std::filesystem::exists(dir + "/out"));
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find("tmp"), std::string::npos)
        << e.path();
  }
  MergeOptions allow;
  allow.before_commit = [&calls] {
    ++calls;
    return absl::OkStatus();
  };
  auto ok = testing::Merge(dir, yaml, allow);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(ok->at("w"), (std::vector<float>{2, 2, 2, 2}));
}

}  // namespace
}  // namespace mergeserve
