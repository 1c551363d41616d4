// The evaluator on the digits zoo (tests/tools/make_zoo.py): it reproduces
// PyTorch's accuracies and sees weights loaded into a program.
#include "mergeserve/eval/program_evaluator.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/eval/fisher_estimator.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

class ProgramEvaluatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    zoo_ = new std::string(testing::DigitsZoo());
    std::ifstream in(*zoo_ + "/zoo.json");
    report_ = new nlohmann::json(nlohmann::json::parse(in));
  }
  static void TearDownTestSuite() {
    delete zoo_;
    delete report_;
  }

  static EvalResult Eval(const std::string& task, const std::string& weights) {
    auto ev = ProgramEvaluator::Create(*zoo_ + "/" + task + "/program.pt");
    EXPECT_TRUE(ev.ok()) << ev.status();
    auto folder = ModelFolder::Open(*zoo_ + "/" + weights);
    EXPECT_TRUE(folder.ok());
    auto names = (*ev)->LoadWeights(**folder);
    EXPECT_TRUE(names.ok()) << names.status();
    auto r =
        (*ev)->Evaluate(*zoo_ + "/data/" + task + "_eval.safetensors", 100);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : EvalResult{};
  }

  static std::string* zoo_;
  static nlohmann::json* report_;
};
std::string* ProgramEvaluatorTest::zoo_ = nullptr;
nlohmann::json* ProgramEvaluatorTest::report_ = nullptr;

TEST_F(ProgramEvaluatorTest, ReproducesPyTorchAccuracyOfEveryExpert) {
  for (const char* task : {"parity", "high", "mod3", "mirror"}) {
    const EvalResult r = Eval(task, task);
    EXPECT_EQ(r.examples, 297);
    EXPECT_NEAR(r.accuracy,
                (*report_)["tasks"][task]["expert_accuracy"].get<double>(),
                1e-6)
        << task;
    EXPECT_GT(r.mean_cross_entropy, 0);
  }
}

TEST_F(ProgramEvaluatorTest, LoadedWeightsChangeTheResult) {
  // The base backbone under each expert's fine-tuned head does worse than
  // the expert: the load really replaced the backbone.
  for (const char* task : {"parity", "high", "mod3", "mirror"}) {
    EXPECT_LT(Eval(task, "base").accuracy, Eval(task, task).accuracy) << task;
  }
}

TEST_F(ProgramEvaluatorTest, ClearErrors) {
  auto ev = ProgramEvaluator::Create(*zoo_ + "/parity/program.pt");
  ASSERT_TRUE(ev.ok());
  auto mirror = ModelFolder::Open(*zoo_ + "/mirror");  // a 10-class head
  ASSERT_TRUE(mirror.ok());
  auto names = (*ev)->LoadWeights(**mirror);
  EXPECT_EQ(names.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(names.status().message()), HasSubstr("head."));
  auto r = (*ev)->Evaluate(*zoo_ + "/data/parity_aux.safetensors");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'labels'"));
  auto bad = ProgramEvaluator::Create(*zoo_ + "/parity/model.safetensors");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("cannot load program"));
}

TEST_F(ProgramEvaluatorTest, FisherMatchesThePyTorchComputation) {
  for (const char* mode : {"exact", "empirical"}) {
    const std::string out = *zoo_ + "/fisher_" + mode;
    FisherOptions options;
    options.mode = *FisherModeFromName(mode);
    options.max_examples = 60;
    auto n =
        EstimateFisher(*zoo_ + "/mod3/program.pt", "",
                       *zoo_ + "/data/mod3_fisher.safetensors", out, options);
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, 60);
    const std::string ref = *zoo_ + "/ref_" + mode + ".safetensors";
    const std::string cmd =
        std::string("/usr/bin/python3 ") + MERGESERVE_SOURCE_DIR +
        "/tests/tools/reference_fisher.py " + *zoo_ + "/mod3/program.pt " +
        *zoo_ + "/data/mod3_fisher.safetensors " + ref + " " + mode + " 60";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    const auto got = testing::ReadModel(out);
    const auto want = testing::ReadModel(ref);
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [name, w] : want) {
      float scale = 0;
      for (float v : w) scale = std::max(scale, std::fabs(v));
      ASSERT_GT(scale, 0) << name;
      for (size_t j = 0; j < w.size(); ++j) {
        EXPECT_NEAR(got.at(name)[j], w[j], 1e-5f * scale)
            << mode << " " << name;
      }
    }
  }
  FisherOptions bad;
  bad.mode = FisherMode::kEmpirical;
  auto n = EstimateFisher(*zoo_ + "/mod3/program.pt", "",
                          *zoo_ + "/data/mod3_aux.safetensors",
                          *zoo_ + "/fisher_bad", bad);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(FisherModeFromName("diagonal").ok());
}

}  // namespace
}  // namespace mergeserve
