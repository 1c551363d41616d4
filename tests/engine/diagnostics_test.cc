// The diagnostics of a hand-computed TIES merge.
#include "mergeserve/engine/diagnostics.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <random>

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

// Subspace overlap, per matrix and per layer: tasks whose task vectors
// share their column space overlap fully (1), unrelated random ones little
// (about k/rows); vectors get none. The JSON keeps every figure.
TEST(DiagnosticsTest, SubspaceOverlapPerMatrixAndLayer) {
  const std::string dir = testing::TempDir("diag_overlap");
  std::mt19937 rng(8);
  const int64_t rows = 64, cols = 32, rank = 16;  // k = 32 / 2 = 16
  // Layer 0: τ_a = Q·A, τ_b = Q·B with one 64×16 Q (same column space).
  const auto q = testing::RandomValues(rows * rank, rng);
  auto shared = [&](const std::vector<float>& coef) {
    std::vector<float> out(rows * cols, 0.f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t l = 0; l < rank; ++l)
          out[i * cols + j] += q[i * rank + l] * coef[l * cols + j];
    return out;
  };
  const std::vector<float> zeros(rows * cols, 0.f), bias(cols, 0.f);
  testing::TestModel base, a, b;
  const char* kShared = "model.layers.0.w";
  const char* kRandom = "model.layers.1.w";
  for (auto* m : {&base, &a, &b}) (*m)["model.norm.weight"] = {{cols}, bias};
  base[kShared] = base[kRandom] = {{rows, cols}, zeros};
  a[kShared] = {{rows, cols}, shared(testing::RandomValues(rank * cols, rng))};
  b[kShared] = {{rows, cols}, shared(testing::RandomValues(rank * cols, rng))};
  a[kRandom] = {{rows, cols}, testing::RandomValues(rows * cols, rng)};
  b[kRandom] = {{rows, cols}, testing::RandomValues(rows * cols, rng)};
  a["model.norm.weight"].values[0] = 1;
  testing::WriteModel(dir + "/base", base);
  testing::WriteModel(dir + "/a", a);
  testing::WriteModel(dir + "/b", b);
  auto config = MergeConfig::FromYaml(
      "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
      "  - model: a\n  - model: b\n",
      dir);
  ASSERT_TRUE(config.ok());
  auto d = AnalyzeMerge(*config, {});
  ASSERT_TRUE(d.ok()) << d.status();
  std::map<std::string, TensorDiagnostics> by_name;
  for (const auto& t : d->tensors) by_name[t.name] = t;
  EXPECT_TRUE(by_name["model.norm.weight"].subspace_overlap.empty());
  const auto& s = by_name[kShared];
  ASSERT_EQ(s.subspace_overlap.size(), 2u);
  EXPECT_EQ(s.subspace_rank, rank);
  EXPECT_NEAR(s.subspace_overlap[0][1], 1.0, 1e-6);
  EXPECT_DOUBLE_EQ(s.subspace_overlap[0][0], 1.0);
  const double random = by_name[kRandom].subspace_overlap[0][1];
  EXPECT_GT(random, 0.05);  // k/rows = 0.25 in expectation
  EXPECT_LT(random, 0.5);
  EXPECT_NEAR(MeanPairwise(d->overall.subspace_overlap),
              (s.subspace_overlap[0][1] + random) / 2, 1e-12);
  // Layers 0 and 1, then the tensors outside layers.
  ASSERT_EQ(d->layers.size(), 3u);
  EXPECT_EQ(d->layers[0].layer, 0);
  EXPECT_NEAR(d->layers[0].subspace_overlap, 1.0, 1e-6);
  EXPECT_EQ(d->layers[1].layer, 1);
  EXPECT_DOUBLE_EQ(d->layers[1].subspace_overlap, random);
  EXPECT_EQ(d->layers[2].layer, -1);
  EXPECT_EQ(d->layers[2].matrices, 0);
  auto back = DiagnosticsFromJson(DiagnosticsToJson(*d));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->tensors[1].subspace_overlap, d->tensors[1].subspace_overlap);
  EXPECT_EQ(back->layers.size(), 3u);
  EXPECT_DOUBLE_EQ(back->layers[1].subspace_overlap, random);
}

}  // namespace
}  // namespace mergeserve
