// RegMean's Gram capture on the digits zoo: the graph rewrite finds every
// linear layer of scripted and traced programs, and the Grams match PyTorch
// forward hooks on the eager model.
#include "mergeserve/eval/gram_estimator.h"

#include <cmath>
#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(GramEstimatorTest, FindsTheLinearLayersOfScriptedAndTracedPrograms) {
  const std::string& zoo = testing::DigitsZoo();
  for (const char* program : {"program.pt", "program_traced.pt"}) {
    auto layers = LinearLayersOf(zoo + "/parity/" + program);
    ASSERT_TRUE(layers.ok()) << layers.status();
    EXPECT_THAT(*layers, ElementsAre("backbone.0.weight", "backbone.2.weight",
                                     "head.weight"))
        << program;
  }
}

TEST(GramEstimatorTest, MatchesPyTorchForwardHooks) {
  const std::string& zoo = testing::DigitsZoo();
  const std::string out = testing::TempDir("grams_mod3");
  GramOptions options;
  options.max_examples = 200;
  options.batch_size = 64;  // batches must not change the result
  auto r = EstimateGrams(zoo + "/mod3/program.pt", zoo + "/mod3",
                         zoo + "/data/mod3_fisher.safetensors", out, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->examples, 200);
  const std::string ref = out + "_ref.safetensors";
  const std::string cmd =
      std::string("/usr/bin/python3 ") + MERGESERVE_SOURCE_DIR +
      "/tests/tools/reference_gram.py " + zoo + "/mod3 " + zoo +
      "/data/mod3_fisher.safetensors " + ref + " 200 > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto got = testing::ReadModel(out);
  const auto want = testing::ReadModel(ref);
  ASSERT_EQ(got.size(), 3u);
  ASSERT_EQ(want.size(), 3u);
  for (const auto& [name, w] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    const auto& g = got.at(name);
    ASSERT_EQ(g.size(), w.size()) << name;
    float scale = 0;
    for (float v : w) scale = std::max(scale, std::fabs(v));
    ASSERT_GT(scale, 0) << name;
    for (size_t j = 0; j < w.size(); ++j) {
      ASSERT_NEAR(g[j], w[j], 1e-5 * scale) << name << "[" << j << "]";
    }
  }
}

TEST(GramEstimatorTest, ScriptedAndTracedProgramsAgree) {
  const std::string& zoo = testing::DigitsZoo();
  std::map<std::string, std::vector<float>> grams[2];
  int k = 0;
  for (const char* program : {"program.pt", "program_traced.pt"}) {
    const std::string out = testing::TempDir(std::string("grams_") + program);
    auto r = EstimateGrams(zoo + "/parity/" + program, "",
                           zoo + "/data/parity_aux.safetensors", out, {});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->examples, 200);
    grams[k++] = testing::ReadModel(out);
  }
  EXPECT_EQ(grams[0], grams[1]);
}

TEST(GramEstimatorTest, ClearErrors) {
  const std::string& zoo = testing::DigitsZoo();
  const std::string out = testing::TempDir("grams_bad");
  auto r = EstimateGrams(zoo + "/parity/program.pt", "",
                         zoo + "/parity/model.safetensors", out, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'inputs'"));
  r = EstimateGrams(zoo + "/parity/model.safetensors", "",
                    zoo + "/data/parity_aux.safetensors", out, {});
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("cannot load program"));
  // Weights that do not fit the program are named.
  r = EstimateGrams(zoo + "/parity/program.pt", zoo + "/mirror",
                    zoo + "/data/parity_aux.safetensors", out, {});
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("head."));
}

}  // namespace
}  // namespace mergeserve
