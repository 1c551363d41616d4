// model+lora references: the adapter merged as PEFT's merge_and_unload()
// does (checked exactly against PEFT on the golden case), and adapters
// that are not plain LoRA, or that name what the model lacks, refused with
// the adapter named.
#include "mergeserve/engine/lora_adapter.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::ElementsAre;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

class LoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("lora");
    // W (2x2) and an untouched norm.
    testing::WriteModel(dir_ + "/m",
                        {{"model.q_proj.weight", {{2, 2}, {1, 0, 0, 1}}},
                         {"model.norm.weight", {{2}, {1, 1}}}});
  }
  void Adapter(const std::string& config, testing::TestModel tensors) {
    testing::WriteModel(dir_ + "/a", tensors);
    std::ofstream(dir_ + "/a/adapter_config.json") << config;
  }
  absl::StatusOr<std::map<std::string, std::vector<float>>> Merge() {
    return testing::Merge(dir_, "merge_method: linear\nmodels: [m+a]\n");
  }
  std::string dir_;
};

TEST_F(LoraTest, TheDeltaIsScaledBAAddedToTheTargetOnly) {
  // r 1, alpha 2: s = 2; B A = [[1], [2]] x [[3, 4]] = [[3, 4], [6, 8]].
  Adapter(R"({"peft_type": "LORA", "r": 1, "lora_alpha": 2,
              "target_modules": ["q_proj"]})",
          {{"base_model.model.model.q_proj.lora_A.weight", {{1, 2}, {3, 4}}},
           {"base_model.model.model.q_proj.lora_B.weight", {{2, 1}, {1, 2}}}});
  auto out = Merge();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)["model.q_proj.weight"],
              Pointwise(FloatNear(1e-6), std::vector<float>{7, 8, 12, 17}));
  EXPECT_THAT((*out)["model.norm.weight"], ElementsAre(1, 1));
  // rslora: s = alpha / sqrt(r).
  Adapter(R"({"peft_type": "LORA", "r": 4, "lora_alpha": 2, "use_rslora": true,
              "target_modules": ["q_proj"]})",
          {{"base_model.model.model.q_proj.lora_A.weight", {{1, 2}, {3, 4}}},
           {"base_model.model.model.q_proj.lora_B.weight", {{2, 1}, {1, 2}}}});
  out = Merge();
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)["model.q_proj.weight"],
              Pointwise(FloatNear(1e-6), std::vector<float>{4, 4, 6, 9}));
}

TEST_F(LoraTest, AdaptersThatAreNotPlainLoraOrMissTheModelAreNamed) {
  const testing::TestModel pair = {
      {"base_model.model.model.q_proj.lora_A.weight", {{1, 2}, {3, 4}}},
      {"base_model.model.model.q_proj.lora_B.weight", {{2, 1}, {1, 2}}}};
  Adapter(R"({"peft_type": "IA3", "target_modules": ["q_proj"]})", pair);
  EXPECT_THAT(std::string(Merge().status().message()),
              HasSubstr("peft_type 'IA3' is not LORA"));
  Adapter(
      R"({"peft_type": "LORA", "use_dora": true, "target_modules": ["q_proj"]})",
      pair);
  EXPECT_THAT(std::string(Merge().status().message()), HasSubstr("DoRA"));
  Adapter(R"({"peft_type": "LORA", "r": 1, "target_modules": ["q_proj"]})",
          {{"base_model.model.model.k_proj.lora_A.weight", {{1, 2}, {3, 4}}},
           {"base_model.model.model.k_proj.lora_B.weight", {{2, 1}, {1, 2}}},
           {"base_model.model.lm_head.weight", {{2}, {1, 1}}}});
  auto missing = Merge();
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("'lm_head.weight', which model"));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("m+a"));
  auto twice = testing::Merge(dir_, "merge_method: linear\nmodels: [m+a+a]\n");
  EXPECT_THAT(std::string(twice.status().message()),
              HasSubstr("at most one '+'"));
}

}  // namespace
}  // namespace mergeserve
