// The methods that came from mergekit's vocabulary (nuslerp, multislerp,
// karcher, sce, nearswap, arcee_fusion) on hand-computed cases and their
// errors; golden_test pins them on the spec's worked cases.
#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;
using testing::TempDir;

TEST(NuSlerpTest, WeightsGiveTAndRowsOrColumnsAreSlerpedApart) {
  const std::string dir = TempDir("nuslerp");
  // Row 0 of a and b are orthogonal, row 1 equal.
  testing::WriteModel(dir + "/a", {{"w", {{2, 2}, {1, 0, 1, 1}}}});
  testing::WriteModel(dir + "/b", {{"w", {{2, 2}, {0, 1, 1, 1}}}});
  auto rows = testing::Merge(
      dir,
      "merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: "
      "{weight: 1}\n  - model: b\n    parameters: {weight: 1}\n"
      "parameters: {nuslerp_flatten: false}\n");
  ASSERT_TRUE(rows.ok()) << rows.status();
  const float s = static_cast<float>(std::sin(M_PI / 4));
  EXPECT_THAT((*rows)["w"],
              Pointwise(FloatNear(1e-6), std::vector<float>{s, s, 1, 1}));
  // A missing weight is named with its model.
  auto missing = testing::Merge(
      dir, "merge_method: nuslerp\nmodels:\n  - model: a\n  - model: b\n");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("needs parameter 'weight' for model 'a'"));
}

TEST(MultiSlerpTest, OneModelIsItselfAndCancellingDirectionsAreNamed) {
  const std::string dir = TempDir("multislerp");
  testing::WriteModel(dir + "/a", {{"w", {{2}, {1, 0}}}});
  testing::WriteModel(dir + "/b", {{"w", {{2}, {-1, 0}}}});
  testing::WriteModel(dir + "/c", {{"w", {{2}, {2, 0}}}});
  auto one =
      testing::Merge(dir,
                     "merge_method: multislerp\nmodels:\n  - model: c\n    "
                     "parameters: {weight: 2}\n");
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT((*one)["w"], Pointwise(FloatNear(0), std::vector<float>{2, 0}));
  // Three directions whose weighted mean is zero: an error, not NaN.
  auto cancel = testing::Merge(
      dir,
      "merge_method: multislerp\nmodels:\n  - model: a\n    parameters: "
      "{weight: 1}\n  - model: b\n    parameters: {weight: 2}\n  - model: c\n"
      "    parameters: {weight: 1}\n");
  EXPECT_EQ(cancel.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(cancel.status().message()),
              HasSubstr("cancel out in tensor 'w'"));
}

TEST(KarcherTest, EqualDirectionsGiveTheMeanNormAndZerosStayZero) {
  const std::string dir = TempDir("karcher");
  testing::WriteModel(dir + "/a", {{"w", {{2}, {3, 4}}}, {"z", {{1}, {0}}}});
  testing::WriteModel(dir + "/b", {{"w", {{2}, {6, 8}}}, {"z", {{1}, {0}}}});
  auto out = testing::Merge(dir, "merge_method: karcher\nmodels: [a, b]\n");
  ASSERT_TRUE(out.ok()) << out.status();
  // Same direction (0.6, 0.8), mean norm 7.5.
  EXPECT_THAT((*out)["w"],
              Pointwise(FloatNear(1e-5), std::vector<float>{4.5f, 6.f}));
  EXPECT_THAT((*out)["z"], Pointwise(FloatNear(0), std::vector<float>{0}));
}

TEST(NearSwapTest, CloseEntriesAreSwappedFarOnesMoveByT) {
  const std::string dir = TempDir("nearswap");
  testing::WriteModel(dir + "/base", {{"w", {{3}, {0, 0, 0}}}});
  testing::WriteModel(dir + "/m", {{"w", {{3}, {0.05f, 1, -2}}}});
  auto out = testing::Merge(
      dir,
      "merge_method: nearswap\nbase_model: base\nmodels: [base, m]\n"
      "parameters: {t: 0.1}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)["w"], Pointwise(FloatNear(1e-7),
                                     std::vector<float>{0.05f, 0.1f, -0.1f}));
  auto no_t = testing::Merge(
      dir, "merge_method: nearswap\nbase_model: base\nmodels: [m]\n");
  EXPECT_THAT(std::string(no_t.status().message()),
              HasSubstr("nearswap needs parameter 't'"));
}

TEST(ArceeFusionTest, OnlyOutlyingImportanceTakesTheModel) {
  const std::string dir = TempDir("arcee");
  std::vector<float> base(16, 0.f), m(16, 0.f);
  m[5] = 3.f;  // one entry moves a lot: the only outlier
  for (int i = 0; i < 16; ++i) m[i] += 0.01f * static_cast<float>(i % 3);
  testing::WriteModel(dir + "/base", {{"w", {{16}, base}}});
  testing::WriteModel(dir + "/m", {{"w", {{16}, m}}});
  auto out = testing::Merge(
      dir, "merge_method: arcee_fusion\nbase_model: base\nmodels: [m]\n");
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<float> want(16, 0.f);
  want[5] = m[5];
  EXPECT_THAT((*out)["w"], Pointwise(FloatNear(0), want));
}

TEST(SceTest, SignConflictsAreErasedAndMeanSquaresWeight) {
  const std::string dir = TempDir("sce");
  testing::WriteModel(dir + "/base", {{"w", {{2}, {0, 0}}}});
  testing::WriteModel(dir + "/a", {{"w", {{2}, {1, -1}}}});
  testing::WriteModel(dir + "/b", {{"w", {{2}, {3, 3}}}});
  auto out = testing::Merge(
      dir, "merge_method: sce\nbase_model: base\nmodels: [a, b]\n");
  ASSERT_TRUE(out.ok()) << out.status();
  // Weights 1/(1+9) and 9/10. Entry 0 agrees: (0.1·1 + 0.9·3)/1 = 2.8;
  // entry 1: the sum is +2, a's −1 is erased: 3.
  EXPECT_THAT((*out)["w"],
              Pointwise(FloatNear(1e-6), std::vector<float>{2.8f, 3}));
  // select_topk keeps the entries of largest variance: entry 1 (variance 4
  // against 1). Entry 0 is then zero in both, and a zero never agrees.
  auto top =
      testing::Merge(dir,
                     "merge_method: sce\nbase_model: base\nmodels: [a, b]\n"
                     "parameters: {select_topk: 0.5}\n");
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_THAT((*top)["w"],
              Pointwise(FloatNear(1e-6), std::vector<float>{0, 3}));
}

TEST(PassthroughTest, SlicesStackLayersScaledPerSourceAndBadRangesAreNamed) {
  const std::string dir = TempDir("passthrough");
  auto model = [](float v) {
    testing::TestModel m;
    m["model.embed_tokens.weight"] = {{2}, {v, v}};
    for (int l = 0; l < 3; ++l) {
      m["model.layers." + std::to_string(l) + ".mlp.down_proj.weight"] = {
          {2}, {v + l, v + l}};
    }
    m["model.norm.weight"] = {{2}, {v, -v}};
    return m;
  };
  testing::WriteModel(dir + "/a", model(10));
  testing::WriteModel(dir + "/b", model(20));
  auto out = testing::Merge(dir, R"(merge_method: passthrough
slices:
  - sources: [{model: a, layer_range: [0, 2]}]
  - sources:
      - model: b
        layer_range: [2, 3]
        parameters: {scale: [{filter: layers.2.mlp, value: 0.5}, {value: 1}]}
)");
  ASSERT_TRUE(out.ok()) << out.status();
  // Embeddings from the first slice, the final norm from the last, layers
  // renumbered; the scale filter saw b's input name (layers.2).
  EXPECT_THAT((*out)["model.embed_tokens.weight"],
              Pointwise(FloatNear(0), std::vector<float>{10, 10}));
  EXPECT_THAT((*out)["model.layers.1.mlp.down_proj.weight"],
              Pointwise(FloatNear(0), std::vector<float>{11, 11}));
  EXPECT_THAT((*out)["model.layers.2.mlp.down_proj.weight"],
              Pointwise(FloatNear(0), std::vector<float>{11, 11}));
  EXPECT_THAT((*out)["model.norm.weight"],
              Pointwise(FloatNear(0), std::vector<float>{20, -20}));
  EXPECT_EQ(out->size(), 5u);
  // Past the source's layers; two sources in a passthrough slice; several
  // slices for another method.
  auto past = testing::Merge(
      dir,
      "merge_method: passthrough\nslices:\n  - sources: [{model: a, "
      "layer_range: [2, 4]}]\n");
  EXPECT_THAT(std::string(past.status().message()),
              HasSubstr("goes past its 3 layers"));
  auto two = testing::Merge(
      dir,
      "merge_method: passthrough\nslices:\n  - sources: [{model: a, "
      "layer_range: [0, 1]}, {model: b, layer_range: [0, 1]}]\n");
  EXPECT_THAT(std::string(two.status().message()),
              HasSubstr("exactly one source per slice"));
  auto partial = testing::Merge(
      dir,
      "merge_method: linear\nslices:\n  - sources: [{model: a, "
      "layer_range: [0, 2]}, {model: b, layer_range: [0, 2]}]\n");
  EXPECT_THAT(std::string(partial.status().message()),
              HasSubstr("one slice over every layer"));
  // One slice over every layer is the models: form.
  auto whole = testing::Merge(
      dir,
      "merge_method: linear\nslices:\n  - sources: [{model: a, "
      "layer_range: [0, 3]}, {model: b, layer_range: [0, 3]}]\n");
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_THAT((*whole)["model.norm.weight"],
              Pointwise(FloatNear(1e-6), std::vector<float>{15, -15}));
}

}  // namespace
}  // namespace mergeserve

namespace mergeserve {
namespace {

TEST(RamTest, UniqueEntriesStaySharedOnesAverageAndPlusScalesUniqueOnes) {
  const std::string dir = TempDir("ram");
  testing::WriteModel(dir + "/base", {{"w", {{4}, {0, 0, 0, 0}}}});
  // Entry 3 of a is below ε = 1e-5: it does not count and is dropped.
  testing::WriteModel(dir + "/a", {{"w", {{4}, {1, 2, 0, 1e-6f}}}});
  testing::WriteModel(dir + "/b", {{"w", {{4}, {0, 4, 3, 0}}}});
  const std::string models = "base_model: base\nmodels: [a, b]\n";
  auto ram = testing::Merge(dir, "merge_method: ram\n" + models);
  ASSERT_TRUE(ram.ok()) << ram.status();
  EXPECT_THAT((*ram)["w"],
              Pointwise(FloatNear(1e-7), std::vector<float>{1, 3, 3, 0}));
  // Each model has one shared and one unique entry: ρ = 1, so its unique
  // entries are scaled by 1 + r·min(ρ, α).
  auto plus = testing::Merge(dir, "merge_method: ramplus_tl\n" + models +
                                      "parameters: {r: 0.5, alpha: 1.0}\n");
  ASSERT_TRUE(plus.ok()) << plus.status();
  EXPECT_THAT((*plus)["w"],
              Pointwise(FloatNear(1e-6), std::vector<float>{1.5, 3, 4.5, 0}));
  auto defaults = testing::Merge(dir, "merge_method: ramplus_tl\n" + models);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_THAT(
      (*defaults)["w"],
      Pointwise(FloatNear(1e-6), std::vector<float>{1.02f, 3, 3.06f, 0}));
  auto no_base = testing::Merge(dir, "merge_method: ram\nmodels: [a, b]\n");
  EXPECT_THAT(std::string(no_base.status().message()),
              HasSubstr("ram needs a base_model"));
}

}  // namespace
}  // namespace mergeserve
