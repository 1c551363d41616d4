// Hand-computed TIES cases for every edge the spec names.
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

// base = 0 and experts with the given task vectors, as one tensor "w".
std::string MakeFamily(const std::vector<std::vector<float>>& taus) {
  const std::string dir = TempDir("ties");
  const int64_t n = static_cast<int64_t>(taus[0].size());
  testing::WriteModel(
      dir + "/base",
      {{"w", {{n}, std::vector<float>(static_cast<size_t>(n), 0.f)}}});
  for (size_t i = 0; i < taus.size(); ++i) {
    testing::WriteModel(dir + "/e" + std::to_string(i),
                        {{"w", {{n}, taus[i]}}});
  }
  return dir;
}

std::string Config(size_t experts, const std::string& per_model,
                   const std::string& global) {
  std::string y = "merge_method: ties\nbase_model: base\nmodels:\n";
  for (size_t i = 0; i < experts; ++i) {
    y += "  - model: e" + std::to_string(i) + "\n    parameters: {" +
         per_model + "}\n";
  }
  if (!global.empty()) y += "parameters: {" + global + "}\n";
  return y;
}

std::vector<float> RunTies(const std::vector<std::vector<float>>& taus,
                           const std::string& per_model,
                           const std::string& global) {
  const std::string dir = MakeFamily(taus);
  auto out = testing::Merge(dir, Config(taus.size(), per_model, global));
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? (*out)["w"] : std::vector<float>();
}

TEST(TiesTest, ExactKeepBreaksBoundaryTiesByLowerIndex) {
  // |tau| = 3, 2, 2, 1; m = 2: the 2nd largest (2) is tied twice.
  EXPECT_THAT(RunTies({{3, -2, 2, 1}}, "density: 0.5", "keep: exact"),
              ElementsAre(3, -2, 0, 0));
  EXPECT_THAT(RunTies({{3, 2, -2, 1}}, "density: 0.5", "keep: exact"),
              ElementsAre(3, 2, 0, 0));
}

// Ties over many chunks, merged by both workers: each chunk keeps the ties
// left after the chunks before it (the merge pass counts them itself), and
// the result is the first ones in flat order. Breadcrumbs' drop set (the
// largest outliers) breaks its ties the same way.
TEST(TiesTest, ExactKeepBreaksTiesAcrossChunksByLowerIndex) {
  const int64_t n = 200000;  // 13 chunks of 16K
  std::vector<float> tau(static_cast<size_t>(n));
  std::mt19937 rng(5);
  int64_t twos = 0;
  for (auto& x : tau) {
    const uint32_t r = rng() % 10;
    x = r == 0 ? 2.f : (r < 6 ? 1.f : 0.5f);  // 10% 2s, 50% 1s
    twos += x == 2.f;
    if (rng() & 1) x = -x;
  }
  for (double density : {0.25, 0.375, 0.5625}) {  // exact in binary
    const int64_t keep = static_cast<int64_t>(density * n);
    auto out =
        RunTies({tau}, "density: " + std::to_string(density), "keep: exact");
    ASSERT_EQ(out.size(), tau.size());
    int64_t left = keep - twos;  // ties at |tau| = 1 to keep
    for (size_t i = 0; i < tau.size(); ++i) {
      const float a = std::fabs(tau[i]);
      const bool kept = a == 2.f || (a == 1.f && left-- > 0);
      ASSERT_EQ(out[i], kept ? tau[i] : 0.f)
          << "density " << density << ", element " << i;
    }
  }
}

TEST(TiesTest, ThresholdKeepKeepsAllTies) {
  EXPECT_THAT(RunTies({{3, -2, 2, 1}}, "density: 0.5", "keep: threshold"),
              ElementsAre(3, -2, 2, 0));
}

TEST(TiesTest, PaperKeepUsesTheNMinusMthSmallest) {
  // n = 4, m = 2: the paper's threshold is the 2nd smallest (2): 3 kept.
  EXPECT_THAT(RunTies({{4, 3, 2, 1}}, "density: 0.5", "keep: paper"),
              ElementsAre(4, 3, 2, 0));
  EXPECT_THAT(RunTies({{4, 3, 2, 1}}, "density: 0.5", "keep: exact"),
              ElementsAre(4, 3, 0, 0));
}

TEST(TiesTest, DensityZeroKeepsNothingAndOneKeepsAll) {
  EXPECT_THAT(RunTies({{4, -3, 2, 1}}, "density: 0.0", ""),
              ElementsAre(0, 0, 0, 0));
  EXPECT_THAT(RunTies({{4, -3, 2, 1}}, "density: 1.0", ""),
              ElementsAre(4, -3, 2, 1));
  // The paper preset does not crash at d = 1 either.
  EXPECT_THAT(RunTies({{4, -3, 2, 1}}, "density: 1.0", "semantics: paper"),
              ElementsAre(4, -3, 2, 1));
  EXPECT_THAT(RunTies({{4, -3, 2, 1}}, "density: 0.0", "semantics: paper"),
              ElementsAre(0, 0, 0, 0));
}

TEST(TiesTest, ZeroSignGoesPlusForMergekitAndMajorityForPaper) {
  // Element 0 sums to 0; the vector's majority sign is negative.
  const std::vector<std::vector<float>> taus = {{1, -2, -3}, {-1, -1, -1}};
  EXPECT_THAT(RunTies(taus, "density: 1.0", "semantics: mergekit"),
              ElementsAre(1, -1.5f, -2));
  EXPECT_THAT(RunTies(taus, "density: 1.0", "semantics: paper"),
              ElementsAre(-1, -1.5f, -2));
  EXPECT_THAT(RunTies(taus, "density: 1.0", "zero_sign: majority"),
              ElementsAre(-1, -1.5f, -2));
}

TEST(TiesTest, MajorityTieSelectsNegativeEntriesAsThePaperCodeDoes) {
  const std::vector<std::vector<float>> taus = {{1, 2, -2}, {-1, -2, 2}};
  EXPECT_THAT(RunTies(taus, "density: 1.0", "semantics: paper"),
              ElementsAre(-1, -2, -2));
}

TEST(TiesTest, EmptyAgreementLeavesTheBase) {
  // Each expert keeps a different entry; where nothing is kept the result is
  // the base (0), never NaN from a 0/0 mean.
  for (const char* sem : {"mergekit", "paper", "peft"}) {
    auto out = RunTies(
        {{5, 0.1f, 0, 0}, {0, 0, 0.1f, 7}}, "density: 0.25",
        std::string("semantics: ") + sem + ", trim_scope: tensor, keep: exact");
    EXPECT_THAT(out, ElementsAre(5, 0, 0, 7)) << sem;
  }
}

TEST(TiesTest, AllZeroTaskVectorsGiveTheBase) {
  for (const char* method : {"ties", "dare_ties", "breadcrumbs", "della",
                             "task_arithmetic", "model_stock"}) {
    const std::string dir = MakeFamily({{0, 0, 0, 0}, {0, 0, 0, 0}});
    std::string y = Config(2, "density: 0.5", "rescale: true");
    y.replace(y.find("ties"), 4, method);
    auto out = testing::Merge(dir, y);
    ASSERT_TRUE(out.ok()) << method << ": " << out.status();
    EXPECT_THAT((*out)["w"], ElementsAre(0, 0, 0, 0)) << method;
  }
}

TEST(TiesTest, WeightsEnterTheElectionForMergekitButNotForPeft) {
  // Unweighted: 1 - 0.6 > 0 elects +; weighted: 0.5 - 1.2 < 0 elects -.
  const std::string dir = MakeFamily({{1}, {-0.6f}});
  const std::string models =
      "merge_method: ties\nbase_model: base\nmodels:\n"
      "  - model: e0\n    parameters: {weight: 0.5, density: 1}\n"
      "  - model: e1\n    parameters: {weight: 2.0, density: 1}\n";
  auto mk = testing::Merge(dir, models);
  ASSERT_TRUE(mk.ok());
  EXPECT_FLOAT_EQ((*mk)["w"][0], -0.6f);  // 2*(-0.6) / 2
  auto peft = testing::Merge(dir, models + "parameters: {semantics: peft}\n");
  ASSERT_TRUE(peft.ok());
  EXPECT_FLOAT_EQ((*peft)["w"][0], 0.5f);  // 0.5*1 / count 1
  auto sum = testing::Merge(dir, models + "parameters: {normalize: false}\n");
  ASSERT_TRUE(sum.ok());
  EXPECT_FLOAT_EQ((*sum)["w"][0], -1.2f);
}

TEST(TiesTest, CountConsensusCountsSigns) {
  // Sum says + (3 - 1 - 1), count says - (1 vs 2).
  auto sum = RunTies({{3}, {-1}, {-1}}, "density: 1", "consensus: sum");
  auto count = RunTies({{3}, {-1}, {-1}}, "density: 1", "consensus: count");
  EXPECT_THAT(sum, ElementsAre(3));
  EXPECT_THAT(count, ElementsAre(-1));
}

TEST(TiesTest, ModelScopeTrimSelectsAcrossTensors) {
  const std::string dir = TempDir("scope");
  // Tensor "a" holds the large updates: a model-wide top-50% keeps all of
  // it and none of "b"; per tensor keeps half of each.
  testing::WriteModel(dir + "/base",
                      {{"a", {{4}, {0, 0, 0, 0}}}, {"b", {{4}, {0, 0, 0, 0}}}});
  testing::WriteModel(dir + "/e0", {{"a", {{4}, {10, -20, 30, 40}}},
                                    {"b", {{4}, {1, 2, -3, 4}}}});
  const std::string y =
      "merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n"
      "    parameters: {density: 0.5}\nparameters: {trim_scope: ";
  auto model = testing::Merge(dir, y + "model}\n");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_THAT((*model)["a"], ElementsAre(10, -20, 30, 40));
  EXPECT_THAT((*model)["b"], ElementsAre(0, 0, 0, 0));
  auto tensor = testing::Merge(dir, y + "tensor}\n");
  ASSERT_TRUE(tensor.ok());
  EXPECT_THAT((*tensor)["a"], ElementsAre(0, 0, 30, 40));
  EXPECT_THAT((*tensor)["b"], ElementsAre(0, 0, -3, 4));
}

TEST(TiesTest, ModelScopeExactTiesBreakByFlatIndexAcrossTensors) {
  const std::string dir = TempDir("scope_ties");
  testing::WriteModel(dir + "/base",
                      {{"a", {{3}, {0, 0, 0}}}, {"b", {{3}, {0, 0, 0}}}});
  testing::WriteModel(dir + "/e0",
                      {{"a", {{3}, {1, 5, 1}}}, {"b", {{3}, {1, 1, 5}}}});
  // n = 6, d = 0.5: keep 3 = both 5s and the first tie (a[0]).
  auto out = testing::Merge(
      dir,
      "merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n"
      "    parameters: {density: 0.5}\nparameters: {trim_scope: model, keep: "
      "exact}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)["a"], ElementsAre(1, 5, 0));
  EXPECT_THAT((*out)["b"], ElementsAre(0, 0, 5));
}

// A whole-model trim whose kept ties run out in the first, middle or last
// tensor: the merge pass of that tensor counts its ties chunk by chunk
// (both workers), those before keep all and those after none; the result
// keeps the first ties in flat order over the whole model, on both backends.
TEST(TiesTest, ModelScopeExactTiesRunOutInAnyTensor) {
  const int64_t n = 100000;  // per tensor: 7 chunks of 16K
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const std::string dir = TempDir("scope_ties_chunks");
    std::mt19937 rng(7);
    testing::TestModel base, expert;
    std::vector<float> flat;  // τ over the whole model, in flat order
    int64_t twos = 0;
    for (int t = 0; t < 3; ++t) {
      std::vector<float> tau(static_cast<size_t>(n));
      for (auto& x : tau) {
        const uint32_t r = rng() % 10;
        x = r == 0 ? 2.f : (r < 6 ? 1.f : 0.5f);  // 10% 2s, 50% 1s
        twos += x == 2.f;
        if (rng() & 1) x = -x;
      }
      flat.insert(flat.end(), tau.begin(), tau.end());
      const std::string name = "t" + std::to_string(t);
      base[name] = {
          {n}, std::vector<float>(static_cast<size_t>(n), 0.f), dtype};
      expert[name] = {{n}, tau, dtype};
    }
    testing::WriteModel(dir + "/base", base);
    testing::WriteModel(dir + "/e0", expert);
    // The ties at |τ| = 1 run out in t0, t1 and t2 (about 50K per tensor).
    // zero_sign: majority adds a census pass over the model, whose tie
    // tensor counts its ties with a ledger of its own.
    for (const char* sign : {"", ", zero_sign: majority"})
      for (double density : {0.25, 0.375, 0.5625}) {  // exact in binary
        const int64_t keep = static_cast<int64_t>(density * 3 * n);
        // The fused passes, and ATen (a cumulative count of the tensor's ties).
        auto both = testing::MergeOnBothBackends(
            dir, Config(1, "density: " + std::to_string(density),
                        std::string("trim_scope: model, keep: exact") + sign));
        ASSERT_TRUE(both.ok()) << both.status();
        for (const auto* out : {&both->first, &both->second}) {
          const char* backend = out == &both->first ? "fused" : "aten";
          int64_t left = keep - twos;  // ties to keep, first in flat order
          for (int t = 0; t < 3; ++t) {
            const auto& got = out->at("t" + std::to_string(t));
            ASSERT_EQ(got.size(), static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) {
              const float x = flat[static_cast<size_t>(t * n + i)];
              const float a = std::fabs(x);
              bool kept = a == 2.f;
              if (a == 1.f && left > 0) {
                kept = true;
                --left;
              }
              ASSERT_EQ(got[static_cast<size_t>(i)], kept ? x : 0.f)
                  << backend << ", density " << density << ", tensor t" << t
                  << ", element " << i;
            }
          }
          EXPECT_EQ(left, 0) << backend;
        }
      }
  }
}

TEST(TiesTest, NanInputIsAClearError) {
  // f32, and bf16 (whose selection converts, checks and bins in one loop),
  // with both keep modes.
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const char* keep : {"keep: exact", "keep: threshold"}) {
      const std::string dir = TempDir("ties_nan");
      std::vector<float> e(40, 1.f);
      e[33] = dtype == DType::kF32 ? NAN : INFINITY;
      testing::WriteModel(dir + "/base",
                          {{"w", {{40}, std::vector<float>(40, 0.f), dtype}}});
      testing::WriteModel(dir + "/e0", {{"w", {{40}, e, dtype}}});
      auto out = testing::Merge(dir, Config(1, "density: 0.5", keep));
      EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(out.status().message()),
                  HasSubstr("tensor 'w' of model 'e0'"));
      EXPECT_THAT(std::string(out.status().message()), HasSubstr("NaN"));
    }
  }
}

TEST(TiesTest, UnknownOptionValueIsAnError) {
  const std::string dir = MakeFamily({{1}});
  auto out = testing::Merge(dir, Config(1, "density: 0.5", "keep: most"));
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("unknown value 'most'"));
}

}  // namespace
}  // namespace mergeserve
