// Several merges in one file: stage order, the errors that name a stage,
// every merge checked on sketches before any runs, and stage outputs
// feeding later merges.
#include "mergeserve/engine/merge_stages.h"

#include <sys/stat.h>

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

absl::StatusOr<StagedMerge> Order(const std::string& text) {
  auto docs = MergeConfig::AllFromYaml(text, ".");
  if (!docs.ok()) return docs.status();
  return OrderStages(*std::move(docs));
}

StageSetup StagesIn(const std::string& dir) {
  StageSetup setup;
  setup.resolver = LocalPathResolver(dir);
  setup.scratch_dir = dir + "/scratch";
  return setup;
}

TEST(MergeStagesTest, StagesRunAfterWhatTheyUseWhateverTheOrder) {
  auto o = Order(
      "name: b\nmerge_method: linear\nmodels: [a+lora_x, m]\n---\n"
      "merge_method: linear\nmodels: [b, m]\n---\n"
      "name: a\nmerge_method: linear\nmodels: [m, n]\n---\n"
      "name: unused\nmerge_method: linear\nmodels: [m]\n");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->stages.size(), 2u);  // a stage nothing uses does not run
  EXPECT_EQ(*o->stages[0].name, "a");
  EXPECT_EQ(*o->stages[1].name, "b");
  EXPECT_FALSE(o->final.name.has_value());
  EXPECT_TRUE(o->IsStage("a+lora_x"));
  EXPECT_FALSE(o->IsStage("m"));
  // The canonical request holds every merge in run order and reads back
  // to the same order.
  auto again = ParseStagedMerge(o->ToYaml(), ".");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToYaml(), o->ToYaml());
  EXPECT_EQ(*again->stages[0].name, "a");
}

TEST(MergeStagesTest, AStageMayBeTheTokenizerSource) {
  auto o = Order(
      "merge_method: linear\nmodels: [m, n]\ntokenizer_source: t\n---\n"
      "name: t\nmerge_method: linear\nmodels: [m, n]\n");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->stages.size(), 1u);
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
  auto checked = CheckStages(*ordered, StagesIn(dir), Backend::kFused, 1);
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(checked->tensors_total, 2);
  EXPECT_EQ(checked->output_bytes, 8);
  EXPECT_GT(checked->memory, 0);
  EXPECT_EQ(checked->final_plan, nullptr);  // it reads a stage
  EXPECT_FALSE(std::filesystem::exists(dir + "/scratch"));
  MergeOptions o;
  o.output_dir = dir + "/out";
  std::vector<std::string> stages, progress;
  o.on_progress = [&](const MergeProgress& p) {
    if (p.phase == "merge") progress.push_back(p.stage);
  };
  auto s = RunMergeStages(*ordered, o, StagesIn(dir),
                          [&](const std::string& n) { stages.push_back(n); });
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(stages, std::vector<std::string>{"mean"});
  EXPECT_EQ(progress, (std::vector<std::string>{"mean", ""}));
  // mean = (2, 4); final = ((2, 4) + (3, 6)) / 2.
  EXPECT_THAT(testing::ReadModel(dir + "/out")["w"],
              ::testing::ElementsAre(2.5f, 5.f));
  EXPECT_FALSE(std::filesystem::exists(dir + "/scratch"));
  // The saved config is the whole request.
  EXPECT_THAT(testing::ReadFileBytes(dir + "/out/mergeserve_config.yaml"),
              HasSubstr("name: mean"));
}

TEST(MergeStagesTest, AWrongShapeInTheLastMergeFailsBeforeTheFirstRuns) {
  const std::string dir = testing::TempDir("stages_check");
  testing::WriteModel(dir + "/m", {{"w", {{2}, {1, 2}}}});
  testing::WriteModel(dir + "/n", {{"w", {{2}, {3, 6}}}});
  testing::WriteModel(dir + "/wide", {{"w", {{3}, {1, 2, 3}}}});
  auto staged = ParseStagedMerge(
      "name: mean\nmerge_method: linear\nmodels: [m, n]\n---\n"
      "name: twice\nmerge_method: linear\nmodels: [mean, m]\n---\n"
      "merge_method: linear\nmodels: [twice, wide]\n",
      dir);
  ASSERT_TRUE(staged.ok()) << staged.status();
  auto checked = CheckStages(*staged, StagesIn(dir), Backend::kFused, 1);
  ASSERT_FALSE(checked.ok());
  EXPECT_THAT(std::string(checked.status().message()), HasSubstr("'w'"));
  // Nothing ran and nothing is left.
  EXPECT_FALSE(std::filesystem::exists(dir + "/scratch"));
  // A stage's own error names the stage.
  auto bad = ParseStagedMerge(
      "name: mean\nmerge_method: linear\nmodels: [m, wide]\n---\n"
      "merge_method: linear\nmodels: [mean, n]\n",
      dir);
  ASSERT_TRUE(bad.ok()) << bad.status();
  auto failed = CheckStages(*bad, StagesIn(dir), Backend::kFused, 1);
  EXPECT_THAT(std::string(failed.status().message()),
              HasSubstr("merge 'mean': "));
}

TEST(MergeStagesTest, ASketchHasTheOutputsNamesShapesAndFilesButNoData) {
  const std::string dir = testing::TempDir("stages_sketch");
  testing::WriteModel(dir + "/m",
                      {{"w", {{2, 2}, {1, 2, 3, 4}}}, {"b", {{2}, {1, 1}}}});
  testing::WriteFile(dir + "/m/config.json", "{\"vocab_size\": 7}");
  auto c = MergeConfig::FromYaml(
      "merge_method: linear\nmodels: [m]\ndtype: bfloat16\n", dir);
  ASSERT_TRUE(c.ok()) << c.status();
  auto plan = MergePlan::Create(*c, LocalPathResolver(dir));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(WritePlanSketch(**plan, dir + "/sketch").ok());
  auto sketch = testing::ReadModel(dir + "/sketch");
  EXPECT_THAT(sketch["w"], ::testing::ElementsAre(0.f, 0.f, 0.f, 0.f));
  EXPECT_THAT(sketch["b"], ::testing::ElementsAre(0.f, 0.f));
  EXPECT_THAT(testing::ReadFileBytes(dir + "/sketch/config.json"),
              HasSubstr("\"torch_dtype\": \"bfloat16\""));
  // Sparse: the tensor bytes take no blocks.
  struct stat st;
  ASSERT_EQ(::stat((dir + "/sketch/model.safetensors").c_str(), &st), 0);
  EXPECT_LT(st.st_blocks * 512, 4096 + st.st_size);
}

TEST(MergeStagesTest, AStageNameIsNeverAPath) {
  const std::string dir = testing::TempDir("stages_paths");
  testing::WriteModel(dir + "/m", {{"w", {{1}, {2}}}});
  testing::WriteModel(dir + "/n", {{"w", {{1}, {4}}}});
  // Stage folders are named by place: "../../escape" writes nothing there.
  auto staged = ParseStagedMerge(
      "name: ../../escape\nmerge_method: linear\nmodels: [m, n]\n---\n"
      "merge_method: linear\nmodels: [../../escape, m]\n",
      dir);
  ASSERT_TRUE(staged.ok()) << staged.status();
  ASSERT_TRUE(CheckStages(*staged, StagesIn(dir), Backend::kFused, 1).ok());
  MergeOptions o;
  o.output_dir = dir + "/out";
  ASSERT_TRUE(RunMergeStages(*staged, o, StagesIn(dir)).ok());
  EXPECT_THAT(testing::ReadModel(dir + "/out")["w"],
              ::testing::ElementsAre(2.5f));
  EXPECT_FALSE(std::filesystem::exists(dir + "/../escape"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/scratch/../../escape"));
  // '+' joins a model and its LoRA, so no stage may hold it.
  auto plus = ParseStagedMerge(
      "name: a+b\nmerge_method: linear\nmodels: [m]\n---\n"
      "merge_method: linear\nmodels: [a+b]\n",
      dir);
  EXPECT_THAT(std::string(plus.status().message()), HasSubstr("holds '+'"));
}

TEST(MergeStagesTest, StageNamesWinOverFolders) {
  const std::string dir = testing::TempDir("stages_names");
  testing::WriteModel(dir + "/m", {{"w", {{1}, {2}}}});
  testing::WriteModel(dir + "/n", {{"w", {{1}, {4}}}});
  testing::WriteModel(dir + "/mean", {{"w", {{1}, {100}}}});  // shadowed
  auto staged = ParseStagedMerge(
      "name: mean\nmerge_method: linear\nmodels: [m, n]\n---\n"
      "merge_method: linear\nmodels: [mean, m]\n",
      dir);
  ASSERT_TRUE(staged.ok()) << staged.status();
  MergeOptions o;
  o.output_dir = dir + "/out";
  ASSERT_TRUE(RunMergeStages(*staged, o, StagesIn(dir)).ok());
  EXPECT_THAT(testing::ReadModel(dir + "/out")["w"],
              ::testing::ElementsAre(2.5f));
}

}  // namespace
}  // namespace mergeserve
