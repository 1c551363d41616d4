// Task arithmetic, linear, breadcrumbs, della and the properties that tie
// the family together.
#include <cmath>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::TestModel;

// A small Llama-like family: base + 3 experts, f32.
std::string RandomFamily(int experts, std::mt19937& rng) {
  const std::string dir = TempDir("family");
  auto make = [&](const TestModel* from) {
    TestModel m;
    for (const char* name :
         {"model.embed_tokens.weight", "model.layers.0.mlp.up.weight",
          "model.layers.1.mlp.up.weight", "model.norm.weight"}) {
      const int64_t n =
          std::string(name).find("norm") != std::string::npos ? 16 : 3000;
      auto v = testing::RandomValues(static_cast<size_t>(n), rng,
                                     from ? 0.01f : 1.f);
      if (from) {
        for (size_t j = 0; j < v.size(); ++j) v[j] += from->at(name).values[j];
      }
      m[name] = {{n}, v};
    }
    m["model.position_ids"] = {{3}, {0, 1, 2}, DType::kI64};
    return m;
  };
  const TestModel base = make(nullptr);
  testing::WriteModel(dir + "/base", base);
  for (int i = 0; i < experts; ++i) {
    testing::WriteModel(dir + "/e" + std::to_string(i), make(&base));
  }
  return dir;
}

std::string Models(int n, const std::string& params) {
  std::string y = "models:\n";
  for (int i = 0; i < n; ++i) {
    y += "  - model: e" + std::to_string(i) + "\n    parameters: {" + params +
         "}\n";
  }
  return y;
}

TEST(TaskArithmeticTest, MatchesTheFormula) {
  const std::string dir = TempDir("ta");
  testing::WriteModel(dir + "/base", {{"w", {{2}, {1, 2}}}});
  testing::WriteModel(dir + "/e0", {{"w", {{2}, {2, 2}}}});
  testing::WriteModel(dir + "/e1", {{"w", {{2}, {1, 6}}}});
  auto out =
      testing::Merge(dir,
                     "merge_method: task_arithmetic\nbase_model: base\n"
                     "models:\n  - model: e0\n    parameters: {weight: 1.0}\n"
                     "  - model: e1\n    parameters: {weight: 0.5}\n"
                     "parameters: {lambda: 0.5}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  // base + 0.5 * (1*[1,0] + 0.5*[0,4])
  EXPECT_THAT((*out)["w"], ElementsAre(1.5f, 3.0f));
}

TEST(LinearTest, EqualWeightsGiveTheMean) {
  std::mt19937 rng(1);
  const std::string dir = RandomFamily(3, rng);
  auto out =
      testing::Merge(dir, "merge_method: linear\n" + Models(3, "weight: 2.0"));
  ASSERT_TRUE(out.ok()) << out.status();
  const auto e0 = testing::ReadModel(dir + "/e0");
  const auto e1 = testing::ReadModel(dir + "/e1");
  const auto e2 = testing::ReadModel(dir + "/e2");
  for (const auto& [name, values] : *out) {
    if (name == "model.position_ids") continue;
    for (size_t j = 0; j < values.size(); ++j) {
      const float mean = (e0.at(name)[j] + e1.at(name)[j] + e2.at(name)[j]) / 3;
      EXPECT_NEAR(values[j], mean, 1e-6f * (1 + std::fabs(mean))) << name;
    }
  }
  // Integer tensors are copied from the reference model.
  EXPECT_THAT((*out)["model.position_ids"], ElementsAre(0, 1, 2));
}

TEST(TiesPropertyTest, OneExpertAtDensityOneIsTaskArithmetic) {
  std::mt19937 rng(2);
  const std::string dir = RandomFamily(1, rng);
  auto ties = testing::Merge(dir, "merge_method: ties\nbase_model: base\n" +
                                      Models(1, "density: 1.0") +
                                      "parameters: {lambda: 0.7}\n");
  auto ta = testing::Merge(
      dir, "merge_method: task_arithmetic\nbase_model: base\n" +
               Models(1, "weight: 1.0") + "parameters: {lambda: 0.7}\n");
  ASSERT_TRUE(ties.ok() && ta.ok());
  EXPECT_EQ(*ties, *ta);
}

TEST(BreadcrumbsTest, DropsOutliersAndSmallUpdates) {
  const std::string dir = TempDir("bc");
  std::vector<float> tau(100);
  for (int i = 0; i < 100; ++i)
    tau[static_cast<size_t>(i)] = static_cast<float>(i + 1);
  testing::WriteModel(dir + "/base",
                      {{"w", {{100}, std::vector<float>(100, 0.f)}}});
  testing::WriteModel(dir + "/e0", {{"w", {{100}, tau}}});
  // density 0.3, gamma 0.1: drop the 10 largest and the 60 smallest.
  auto out = testing::Merge(
      dir,
      "merge_method: breadcrumbs\nbase_model: base\nmodels:\n"
      "  - model: e0\n    parameters: {density: 0.3, gamma: 0.1}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  for (int i = 0; i < 100; ++i) {
    const float expect = (i >= 60 && i < 90) ? static_cast<float>(i + 1) : 0.f;
    EXPECT_EQ((*out)["w"][static_cast<size_t>(i)], expect) << i;
  }
}

TEST(DellaTest, KeepsLargeEntriesMoreOftenAndRejectsBadEpsilon) {
  const std::string dir = TempDir("della");
  const int64_t rows = 400, cols = 50;
  std::vector<float> tau(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c)
      tau[static_cast<size_t>(r * cols + c)] = static_cast<float>(c + 1);
  }
  testing::WriteModel(
      dir + "/base",
      {{"w", {{rows, cols}, std::vector<float>(tau.size(), 0.f)}}});
  testing::WriteModel(dir + "/e0", {{"w", {{rows, cols}, tau}}});
  auto out = testing::Merge(
      dir,
      "merge_method: della_linear\nbase_model: base\nmodels:\n"
      "  - model: e0\n    parameters: {density: 0.5, epsilon: 0.4}\n"
      "parameters: {rescale_mode: inverse}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  // Keep probability of column c is 0.1 + 0.8 c/(cols-1): compare the
  // smallest and largest columns' keep rates.
  int kept_small = 0, kept_large = 0;
  for (int64_t r = 0; r < rows; ++r) {
    kept_small += (*out)["w"][static_cast<size_t>(r * cols)] != 0;
    kept_large += (*out)["w"][static_cast<size_t>(r * cols + cols - 1)] != 0;
  }
  EXPECT_NEAR(kept_small / static_cast<double>(rows), 0.1, 0.06);
  EXPECT_NEAR(kept_large / static_cast<double>(rows), 0.9, 0.06);
  // Survivors are rescaled by 1/p: the largest column's survivors are 50/0.9.
  for (int64_t r = 0; r < rows; ++r) {
    const float v = (*out)["w"][static_cast<size_t>(r * cols + cols - 1)];
    if (v != 0) {
      EXPECT_NEAR(v, 50.f / 0.9f, 1e-3f);
    }
  }
  auto bad = testing::Merge(
      dir,
      "merge_method: della\nbase_model: base\nmodels:\n"
      "  - model: e0\n    parameters: {density: 0.9, epsilon: 0.2}\n");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("epsilon"));
}

TEST(TaskVectorFamilyTest, NeedsABaseAndChecksDensity) {
  std::mt19937 rng(3);
  const std::string dir = RandomFamily(2, rng);
  auto no_base =
      testing::Merge(dir, "merge_method: ties\n" + Models(2, "density: 0.5"));
  EXPECT_THAT(std::string(no_base.status().message()),
              HasSubstr("needs base_model"));
  auto bad = testing::Merge(dir, "merge_method: ties\nbase_model: base\n" +
                                     Models(2, "density: 1.5"));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("density must be in [0, 1]"));
  auto scope = testing::Merge(
      dir, "merge_method: dare_ties\nbase_model: base\n" +
               Models(2, "density: 0.5") + "parameters: {trim_scope: model}\n");
  EXPECT_THAT(std::string(scope.status().message()),
              HasSubstr("trim_scope: model"));
}

}  // namespace
}  // namespace mergeserve
