// Several merges in one file: stage order, the errors that name a stage,
// and that one request to the service is one merge.
#include "mergeserve/engine/merge_stages.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

absl::StatusOr<std::vector<MergeConfig>> Order(const std::string& text) {
  auto docs = MergeConfig::AllFromYaml(text, ".");
  if (!docs.ok()) return docs.status();
  return OrderStages(*std::move(docs));
}

TEST(MergeStagesTest, StagesRunAfterWhatTheyUseWhateverTheOrder) {
  auto o = Order(
      "name: b\nmerge_method: linear\nmodels: [a+lora_x, m]\n---\n"
      "merge_method: linear\nmodels: [b, m]\n---\n"
      "name: a\nmerge_method: linear\nmodels: [m, n]\n---\n"
      "name: unused\nmerge_method: linear\nmodels: [m]\n");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->size(), 3u);  // a stage nothing uses does not run
  EXPECT_EQ(*(*o)[0].name, "a");
  EXPECT_EQ(*(*o)[1].name, "b");
  EXPECT_FALSE((*o)[2].name.has_value());
}

TEST(MergeStagesTest, CyclesDuplicatesAndFinalsAreNamed) {
  auto cycle = Order(
      "name: a\nmerge_method: linear\nmodels: [b]\n---\n"
      "name: b\nmerge_method: linear\nmodels: [a]\n---\n"
      "merge_method: linear\nmodels: [a]\n");
  EXPECT_THAT(std::string(cycle.status().message()), HasSubstr("cycle"));
  auto twice = Order(
      "name: a\nmerge_method: linear\nmodels: [m]\n---\n"
      "name: a\nmerge_method: linear\nmodels: [m]\n---\n"
      "merge_method: linear\nmodels: [a]\n");
  EXPECT_THAT(std::string(twice.status().message()),
              HasSubstr("two merges are named 'a'"));
  auto none = Order("name: a\nmerge_method: linear\nmodels: [m]\n");
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("exactly one without a name"));
  auto two = Order(
      "merge_method: linear\nmodels: [m]\n---\nmerge_method: linear\n"
      "models: [m]\n");
  EXPECT_THAT(std::string(two.status().message()), HasSubstr("this one has 2"));
  // One request is one merge.
  auto one = MergeConfig::FromYaml(
      "name: a\nmerge_method: linear\nmodels: [m]\n---\n"
      "merge_method: linear\nmodels: [a]\n",
      ".");
  EXPECT_THAT(std::string(one.status().message()),
              HasSubstr("the file holds 2 merges"));
}

TEST(MergeStagesTest, AStageOutputFeedsTheNextAndScratchIsRemoved) {
  const std::string dir = testing::TempDir("stages");
  testing::WriteModel(dir + "/m", {{"w", {{2}, {1, 2}}}});
  testing::WriteModel(dir + "/n", {{"w", {{2}, {3, 6}}}});
  auto docs = MergeConfig::AllFromYaml(
      "merge_method: linear\nmodels: [mean, n]\n---\n"
      "name: mean\nmerge_method: linear\nmodels: [m, n]\n",
      dir);
  ASSERT_TRUE(docs.ok()) << docs.status();
  auto ordered = OrderStages(*std::move(docs));
  ASSERT_TRUE(ordered.ok()) << ordered.status();
  MergeOptions o;
  o.output_dir = dir + "/out";
  std::vector<std::string> stages;
  auto s = RunMergeStages(*ordered, o, dir + "/scratch",
                          [&](const std::string& n) { stages.push_back(n); });
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(stages, std::vector<std::string>{"mean"});
  // mean = (2, 4); final = ((2, 4) + (3, 6)) / 2.
  EXPECT_THAT(testing::ReadModel(dir + "/out")["w"],
              ::testing::ElementsAre(2.5f, 5.f));
  EXPECT_FALSE(std::filesystem::exists(dir + "/scratch"));
}

}  // namespace
}  // namespace mergeserve
