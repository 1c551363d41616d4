// slerp, model_stock, fisher and regmean on hand-computed cases.
#include <cmath>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::ElementsAre;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;
using testing::TempDir;

TEST(SlerpTest, EndpointsColinearLerpAndTheAngle) {
  const std::string dir = TempDir("slerp");
  testing::WriteModel(dir + "/a", {{"w", {{2}, {1, 0}}}, {"v", {{2}, {1, 1}}}});
  testing::WriteModel(dir + "/b", {{"w", {{2}, {0, 2}}}, {"v", {{2}, {2, 2}}}});
  auto run = [&](double t) {
    return testing::Merge(dir,
                          "merge_method: slerp\nbase_model: a\nmodels: [a, b]\n"
                          "parameters: {t: " +
                              std::to_string(t) + "}\n");
  };
  auto t0 = run(0), t1 = run(1), half = run(0.5);
  ASSERT_TRUE(t0.ok() && t1.ok() && half.ok()) << t0.status();
  EXPECT_THAT((*t0)["w"], ElementsAre(1, 0));
  EXPECT_THAT((*t1)["w"], Pointwise(FloatNear(1e-6), std::vector<float>{0, 2}));
  // Orthogonal: sin(π/4)/sin(π/2) on each side.
  const float s = static_cast<float>(std::sin(M_PI / 4));
  EXPECT_THAT((*half)["w"],
              Pointwise(FloatNear(1e-6), std::vector<float>{s, 2 * s}));
  // Colinear vectors fall back to lerp.
  EXPECT_THAT((*half)["v"],
              Pointwise(FloatNear(1e-6), std::vector<float>{1.5f, 1.5f}));
}

TEST(SlerpTest, NeedsExactlyTwoModels) {
  const std::string dir = TempDir("slerp3");
  for (const char* m : {"a", "b", "c"})
    testing::WriteModel(dir + "/" + m, {{"w", {{1}, {1}}}});
  auto out = testing::Merge(
      dir, "merge_method: slerp\nmodels: [a, b, c]\nparameters: {t: 0.5}\n");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("exactly 2 models, got 3"));
}

TEST(ModelStockTest, InterpolatesByTheTaskVectorAngle) {
  const std::string dir = TempDir("ms");
  testing::WriteModel(dir + "/base",
                      {{"w", {{2}, {0, 0}}}, {"v", {{2}, {1, 1}}}});
  // w: orthogonal task vectors: cos 0, t 0: the base. v: equal: cos 1, t 1.
  testing::WriteModel(dir + "/e0",
                      {{"w", {{2}, {1, 0}}}, {"v", {{2}, {2, 3}}}});
  testing::WriteModel(dir + "/e1",
                      {{"w", {{2}, {0, 1}}}, {"v", {{2}, {2, 3}}}});
  auto out = testing::Merge(
      dir, "merge_method: model_stock\nbase_model: base\nmodels: [e0, e1]\n");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)["w"], ElementsAre(0, 0));
  EXPECT_THAT((*out)["v"],
              Pointwise(FloatNear(1e-6), std::vector<float>{2, 3}));
}

TEST(ModelStockTest, StreamsRowsAcrossChunkBoundariesAsTheWholeTensorPath) {
  // Rows of 1000 across 16K-element chunks: a row's sums come from two
  // chunks. The fused (streamed) and ATen (whole-tensor) paths agree.
  const std::string dir = TempDir("ms_stream");
  std::mt19937 rng(7);
  const std::vector<float> b = testing::RandomValues(70000, rng, 0.5f);
  testing::WriteModel(dir + "/base", {{"w", {{70, 1000}, b}}});
  for (int e = 0; e < 3; ++e) {
    std::vector<float> v = testing::RandomValues(70000, rng, 0.02f);
    for (size_t j = 0; j < v.size(); ++j) v[j] += b[j] + 0.01f * (j % 3);
    testing::WriteModel(dir + "/e" + std::to_string(e),
                        {{"w", {{70, 1000}, v}}});
  }
  for (const char* rows : {"false", "true"}) {
    const std::string yaml = std::string(
                                 "merge_method: model_stock\nbase_model: "
                                 "base\nmodels: [e0, e1, e2]\n"
                                 "parameters: {filter_wise: ") +
                             rows + "}\n";
    auto both = testing::MergeOnBothBackends(dir, yaml);
    ASSERT_TRUE(both.ok()) << both.status();
    EXPECT_THAT(both->first["w"], Pointwise(FloatNear(2e-6), both->second["w"]))
        << rows;
    // Not the base: the experts agree in part, so t is strictly inside.
    EXPECT_NE(both->first["w"][0], b[0]);
  }
}

TEST(FisherTest, WeightsByTheFloorOfTheDiagonals) {
  const std::string dir = TempDir("fisher");
  testing::WriteModel(dir + "/m0", {{"w", {{2}, {1, 1}}}});
  testing::WriteModel(dir + "/m1", {{"w", {{2}, {3, 3}}}});
  testing::WriteModel(dir + "/f0", {{"w", {{2}, {1, 0}}}});
  testing::WriteModel(dir + "/f1", {{"w", {{2}, {3, 0}}}});
  auto out = testing::Merge(dir,
                            "merge_method: fisher\nmodels:\n"
                            "  - model: m0\n    parameters: {fisher: f0}\n"
                            "  - model: m1\n    parameters: {fisher: f1}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  // (1*1 + 3*3) / 4 = 2.5; zero Fishers floor to equal weights: 2.
  EXPECT_THAT((*out)["w"],
              Pointwise(FloatNear(1e-6), std::vector<float>{2.5f, 2.f}));
  auto missing =
      testing::Merge(dir, "merge_method: fisher\nmodels: [m0, m1]\n");
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("needs a 'fisher' parameter"));
}

TEST(RegMeanTest, IdentityGramsAverageAndDiagonalGramsWeightColumns) {
  const std::string dir = TempDir("regmean");
  // W is 1 x 2 (out x in); its Gram is 2 x 2.
  testing::WriteModel(dir + "/m0",
                      {{"w", {{1, 2}, {1, 1}}}, {"b", {{1}, {1}}}});
  testing::WriteModel(dir + "/m1",
                      {{"w", {{1, 2}, {3, 3}}}, {"b", {{1}, {3}}}});
  testing::WriteModel(dir + "/g0", {{"w", {{2, 2}, {1, 0, 0, 3}}}});
  testing::WriteModel(dir + "/g1", {{"w", {{2, 2}, {3, 0, 0, 1}}}});
  auto out = testing::Merge(dir,
                            "merge_method: regmean\nmodels:\n"
                            "  - model: m0\n    parameters: {gram: g0}\n"
                            "  - model: m1\n    parameters: {gram: g1}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  // Column 0: (1*1 + 3*3)/(1+3) = 2.5; column 1: (3*1 + 1*3)/4 = 1.5.
  EXPECT_THAT((*out)["w"],
              Pointwise(FloatNear(1e-5), std::vector<float>{2.5f, 1.5f}));
  EXPECT_THAT((*out)["b"], ElementsAre(2));  // no Gram: the average
  testing::WriteModel(dir + "/bad",
                      {{"w", {{3, 3}, std::vector<float>(9, 1.f)}}});
  auto bad = testing::Merge(dir,
                            "merge_method: regmean\nmodels:\n"
                            "  - model: m0\n    parameters: {gram: g0}\n"
                            "  - model: m1\n    parameters: {gram: bad}\n");
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("must be [2, 2]"));
}

}  // namespace
}  // namespace mergeserve
