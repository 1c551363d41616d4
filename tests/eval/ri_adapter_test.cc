// RI on the digits zoo: adaptation lowers each expert's objective and the
// interference ξ of the merge, against merging the unadapted experts.
#include "mergeserve/eval/ri_adapter.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

const char* const kTasks[] = {"parity", "high", "mod3", "mirror"};

std::vector<RiExpert> ZooExperts(const std::string& zoo) {
  std::vector<RiExpert> experts;
  for (const char* t : kTasks) {
    experts.push_back({zoo + "/" + t + "/program.pt", zoo + "/" + t,
                       zoo + "/data/" + t + "_aux.safetensors"});
  }
  return experts;
}

std::string TiesYaml(const std::string& a, const std::string& b,
                     const std::string& c, const std::string& d) {
  return "merge_method: ties\nbase_model: base\nparameters: {density: 0.5}\n"
         "models:\n  - model: " +
         a + "\n  - model: " + b + "\n  - model: " + c + "\n  - model: " + d +
         "\n";
}

TEST(RiAdapterTest, LowersInterferenceOfATiesMerge) {
  const std::string& zoo = testing::DigitsZoo();
  RiOptions options;
  options.steps = 60;
  options.lr = 1e-3;
  auto ri = RiAdapter::Create(zoo + "/base", ZooExperts(zoo), options);
  ASSERT_TRUE(ri.ok()) << ri.status();
  EXPECT_EQ((*ri)->pool_size(), 800);
  const std::string dir = testing::TempDir("ri");
  for (int i = 0; i < 4; ++i) {
    int64_t last_step = 0;
    auto a = (*ri)->Adapt(i, dir + "/" + kTasks[i],
                          [&](int64_t step, int64_t) { last_step = step; });
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(last_step, 60);
    EXPECT_LT(a->loss_after, a->loss_before) << kTasks[i];
  }
  // The adapted checkpoints keep the heads and the tensor set.
  EXPECT_EQ(testing::ReadModel(dir + "/parity").at("head.weight"),
            testing::ReadModel(zoo + "/parity").at("head.weight"));

  MergeOptions mo;
  mo.resolver = LocalPathResolver(zoo);
  const std::string plain = dir + "/merged_plain";
  auto cfg =
      MergeConfig::FromYaml(TiesYaml("parity", "high", "mod3", "mirror"), zoo);
  ASSERT_TRUE(cfg.ok());
  mo.output_dir = plain;
  ASSERT_TRUE(RunMerge(*cfg, mo).ok());
  auto adapted_cfg = MergeConfig::FromYaml(
      TiesYaml(dir + "/parity", dir + "/high", dir + "/mod3", dir + "/mirror"),
      zoo);
  ASSERT_TRUE(adapted_cfg.ok());
  const std::string adapted = dir + "/merged_adapted";
  mo.output_dir = adapted;
  ASSERT_TRUE(RunMerge(*adapted_cfg, mo).ok());

  auto before = (*ri)->Interference(plain);
  auto after = (*ri)->Interference(adapted);
  ASSERT_TRUE(before.ok() && after.ok());
  EXPECT_GT(*before, 0);
  EXPECT_LT(*after, *before);
  // The experts themselves have no interference with themselves: ξ of
  // expert 0's own backbone counts only the other tasks.
  auto self = (*ri)->Interference(zoo + "/parity");
  ASSERT_TRUE(self.ok());
  EXPECT_GT(*self, 0);
}

TEST(RiAdapterTest, ClearErrors) {
  const std::string& zoo = testing::DigitsZoo();
  RiOptions bad;
  bad.lr = 0;
  EXPECT_EQ(
      RiAdapter::Create(zoo + "/base", ZooExperts(zoo), bad).status().code(),
      absl::StatusCode::kInvalidArgument);
  auto experts = ZooExperts(zoo);
  experts[1].aux_data = zoo + "/parity/model.safetensors";
  auto r = RiAdapter::Create(zoo + "/base", experts, {});
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'inputs'"));
}

}  // namespace
}  // namespace mergeserve
