// The diagnostics of a hand-computed TIES merge.
#include "mergeserve/engine/diagnostics.h"

#include <cmath>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(DiagnosticsTest, MatchesAHandComputedMerge) {
  const std::string dir = testing::TempDir("diag");
  testing::WriteModel(dir + "/base", {{"w", {{4}, {0, 0, 0, 0}}}});
  testing::WriteModel(dir + "/a", {{"w", {{4}, {1, -2, 3, 0}}}});
  testing::WriteModel(dir + "/b", {{"w", {{4}, {1, 2, -3, 4}}}});
  auto config = MergeConfig::FromYaml(
      "merge_method: ties\nbase_model: base\nmodels:\n"
      "  - model: a\n    parameters: {density: 1}\n"
      "  - model: b\n    parameters: {density: 1}\n",
      dir);
  ASSERT_TRUE(config.ok());
  MergeOptions options;
  options.output_dir = dir + "/never";
  auto d = AnalyzeMerge(*config, options);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_THAT(d->experts, ElementsAre("a", "b"));
  ASSERT_EQ(d->tensors.size(), 1u);
  const TensorDiagnostics& t = d->overall;
  EXPECT_EQ(t.numel, 4);
  // a keeps its 3 nonzero entries, b all 4.
  EXPECT_THAT(t.kept_fraction, ElementsAre(0.75, 1.0));
  // Entries 0..2 are kept by both; 1 and 2 disagree in sign.
  EXPECT_DOUBLE_EQ(t.conflict_rate, 2.0 / 3.0);
  EXPECT_THAT(t.tau_norm, ElementsAre(DoubleNear(std::sqrt(14.0), 1e-9),
                                      DoubleNear(std::sqrt(30.0), 1e-9)));
  EXPECT_NEAR(t.cosine[0][1], (1 - 4 - 9) / std::sqrt(14.0 * 30.0), 1e-9);
  EXPECT_EQ(t.cosine[0][1], t.cosine[1][0]);
  // mergekit election: [1, +: 2 (tie -> +), +: 3 (tie -> +), 4]
  EXPECT_NEAR(t.merged_norm, std::sqrt(1 + 4 + 9 + 16.0), 1e-6);
  EXPECT_FALSE(std::filesystem::exists(dir + "/never"));  // nothing written
}

TEST(DiagnosticsTest, TrimAndMethodsOutsideTheFamily) {
  const std::string dir = testing::TempDir("diag2");
  testing::WriteModel(dir + "/base",
                      {{"w", {{10}, std::vector<float>(10, 0.f)}}});
  testing::WriteModel(dir + "/a",
                      {{"w", {{10}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}}});
  auto ties = MergeConfig::FromYaml(
      "merge_method: ties\nbase_model: base\nmodels:\n"
      "  - model: a\n    parameters: {density: 0.3}\n",
      dir);
  auto d = AnalyzeMerge(*ties, {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_THAT(d->overall.kept_fraction, ElementsAre(0.3));
  EXPECT_EQ(d->overall.conflict_rate,
            0);  // one expert: nothing to disagree with
  auto slerp = MergeConfig::FromYaml(
      "merge_method: slerp\nbase_model: base\nmodels: [base, a]\nparameters: "
      "{t: 0.5}\n",
      dir);
  auto bad = AnalyzeMerge(*slerp, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("task-vector methods"));
}

}  // namespace
}  // namespace mergeserve
