// mergekit's `modules:`: which module a tensor belongs to (mergekit's
// modular architectures, or inferred from layer stacks), each module merged
// with its own parameters, modules left out not written, and the errors
// that name a module.
#include "mergeserve/engine/model_modules.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/engine/merge_plan.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A LLaVA-like model: a text stack, a vision stack, loose tensors.
testing::TestModel Llava(float v) {
  return {{"language_model.model.embed_tokens.weight", {{2}, {v, v}}},
          {"language_model.model.layers.0.mlp.weight", {{1}, {v}}},
          {"language_model.model.layers.1.mlp.weight", {{1}, {v}}},
          {"vision_tower.vision_model.encoder.layers.0.fc.weight", {{1}, {v}}},
          {"multi_modal_projector.linear_1.weight", {{1}, {v}}}};
}

TEST(ModelModulesTest, GemmaVisionModelsHaveMergekitsModuleNames) {
  const std::string dir = testing::TempDir("modules_gemma");
  testing::WriteModel(
      dir, {{"language_model.model.layers.0.w", {{1}, {1}}},
            {"vision_tower.vision_model.encoder.layers.0.w", {{1}, {1}}},
            {"multi_modal_projector.mm_input_projection_weight", {{1}, {1}}},
            {"lm_head.weight", {{1}, {1}}},
            {"stray.weight", {{1}, {1}}}});
  testing::WriteFile(dir + "/config.json", R"({"model_type": "gemma3"})");
  auto folder = ModelFolder::Open(dir);
  ASSERT_TRUE(folder.ok()) << folder.status();
  const ModelModules m = ModelModules::Of(**folder);
  EXPECT_THAT(m.names(), ElementsAre("multi_modal_projector", "text_decoder",
                                     "vision_tower"));
  EXPECT_EQ(m.ModuleOf("language_model.model.layers.0.w"), "text_decoder");
  EXPECT_EQ(m.ModuleOf("lm_head.weight"), "text_decoder");
  EXPECT_EQ(m.ModuleOf("vision_tower.vision_model.encoder.layers.0.w"),
            "vision_tower");
  EXPECT_EQ(m.ModuleOf("multi_modal_projector.mm_input_projection_weight"),
            "multi_modal_projector");
  EXPECT_EQ(m.ModuleOf("stray.weight"), "");
}

TEST(ModelModulesTest, QwenVlProjectorWinsOverTheVisionTowerItSitsIn) {
  const std::string dir = testing::TempDir("modules_qwen");
  testing::WriteModel(dir, {{"visual.merger.mlp.0.weight", {{1}, {1}}},
                            {"visual.blocks.0.attn.weight", {{1}, {1}}},
                            {"model.layers.0.mlp.weight", {{1}, {1}}}});
  testing::WriteFile(dir + "/config.json", R"({"model_type": "qwen2_vl"})");
  auto folder = ModelFolder::Open(dir);
  ASSERT_TRUE(folder.ok()) << folder.status();
  const ModelModules m = ModelModules::Of(**folder);
  EXPECT_EQ(m.ModuleOf("visual.merger.mlp.0.weight"), "multi_modal_projector");
  EXPECT_EQ(m.ModuleOf("visual.blocks.0.attn.weight"), "vision_tower");
  EXPECT_EQ(m.ModuleOf("model.layers.0.mlp.weight"), "text_decoder");
}

TEST(ModelModulesTest, OtherModelsAreInferredFromTheirLayerStacks) {
  const std::string dir = testing::TempDir("modules_inferred");
  testing::WriteModel(dir + "/llava", Llava(1));
  auto llava = ModelFolder::Open(dir + "/llava");
  ASSERT_TRUE(llava.ok()) << llava.status();
  const ModelModules m = ModelModules::Of(**llava);
  EXPECT_THAT(m.names(),
              ElementsAre("default", "language_model.model.layers",
                          "vision_tower.vision_model.encoder.layers"));
  EXPECT_EQ(m.ModuleOf("language_model.model.layers.1.mlp.weight"),
            "language_model.model.layers");
  EXPECT_EQ(m.ModuleOf("language_model.model.embed_tokens.weight"), "default");
  // One stack: everything is "default".
  testing::WriteModel(dir + "/llama", {{"model.layers.0.w", {{1}, {1}}},
                                       {"lm_head.weight", {{1}, {1}}}});
  auto llama = ModelFolder::Open(dir + "/llama");
  ASSERT_TRUE(llama.ok()) << llama.status();
  const ModelModules one = ModelModules::Of(**llama);
  EXPECT_THAT(one.names(), ElementsAre("default"));
  EXPECT_EQ(one.ModuleOf("model.layers.0.w"), "default");
}

TEST(ModelModulesTest, EachModuleMergesWithItsOwnParameters) {
  const std::string dir = testing::TempDir("modules_merge");
  testing::WriteModel(dir + "/a", Llava(2));
  testing::WriteModel(dir + "/b", Llava(4));
  // "default" holds no layers: a slice over one is refused.
  auto merged = testing::Merge(dir, R"(
merge_method: linear
modules:
  default:
    slices:
      - sources:
          - {model: b, layer_range: [0, 1]}
          - {model: a, layer_range: [0, 1]}
)");
  ASSERT_FALSE(merged.ok());
  EXPECT_THAT(std::string(merged.status().message()),
              HasSubstr("'default' merges one slice over all of its 0 layers"));
  // Text: a's weight 1 and b's 0 (the models' own values); vision: the
  // module's weight 0.25 for both (normalised: the mean); default: b
  // weighted 3 (a model's own value wins over the module's).
  merged = testing::Merge(dir, R"(
merge_method: linear
modules:
  language_model.model.layers:
    models:
      - model: a
        parameters: {weight: 1.0}
      - model: b
        parameters: {weight: 0.0}
  vision_tower.vision_model.encoder.layers:
    parameters: {weight: 0.25}
    models: [a, b]
  default:
    models:
      - model: b
        parameters: {weight: 3.0}
      - model: a
        parameters: {weight: 1.0}
)");
  ASSERT_TRUE(merged.ok()) << merged.status();
  auto& m = *merged;
  EXPECT_THAT(m["language_model.model.layers.0.mlp.weight"], ElementsAre(2.f));
  EXPECT_THAT(m["language_model.model.layers.1.mlp.weight"], ElementsAre(2.f));
  EXPECT_THAT(m["vision_tower.vision_model.encoder.layers.0.fc.weight"],
              ElementsAre(3.f));
  EXPECT_THAT(m["multi_modal_projector.linear_1.weight"], ElementsAre(3.5f));
  EXPECT_THAT(m["language_model.model.embed_tokens.weight"],
              ElementsAre(3.5f, 3.5f));
}

TEST(ModelModulesTest, AModuleLeftOutIsNotWrittenAndSaysSo) {
  const std::string dir = testing::TempDir("modules_left_out");
  testing::WriteModel(dir + "/a", Llava(2));
  testing::WriteModel(dir + "/b", Llava(4));
  auto c = MergeConfig::FromYaml(R"(
merge_method: linear
modules:
  language_model.model.layers:
    slices:
      - sources:
          - {model: a, layer_range: [0, 2]}
          - {model: b, layer_range: [0, 2]}
)",
                                 dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->ToYaml(), HasSubstr("modules:\n  language_model.model.layers:"
                                     "\n    slices:"));
  auto again = MergeConfig::FromYaml(c->ToYaml(), dir);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToYaml(), c->ToYaml());
  auto plan = MergePlan::Create(*c, LocalPathResolver(dir));
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ((*plan)->tensors().size(), 2u);
  EXPECT_EQ((*plan)->tensors()[0].module, 0);
  EXPECT_THAT((*plan)->warnings(),
              ElementsAre(HasSubstr("module 'default' (2 tensors)"),
                          HasSubstr("module 'vision_tower.vision_model."
                                    "encoder.layers' (1 tensor)")));
}

TEST(ModelModulesTest, ErrorsNameTheModule) {
  const std::string dir = testing::TempDir("modules_errors");
  testing::WriteModel(dir + "/a", Llava(2));
  testing::WriteModel(dir + "/b", Llava(4));
  testing::WriteModel(dir + "/c", Llava(6));
  auto plan_of = [&](const std::string& yaml) {
    auto c = MergeConfig::FromYaml(yaml, dir);
    if (!c.ok()) return c.status();
    return MergePlan::Create(*c, LocalPathResolver(dir)).status();
  };
  EXPECT_THAT(std::string(plan_of("merge_method: linear\nmodules:\n"
                                  "  text_decoder:\n    models: [a, b]\n")
                              .message()),
              HasSubstr("'text_decoder' is not a module of model 'a' "
                        "(inferred from the layer stacks; its modules: "
                        "default, language_model.model.layers"));
  EXPECT_THAT(std::string(plan_of("merge_method: linear\nmodules:\n"
                                  "  default:\n    models: [a, b]\n"
                                  "  language_model.model.layers:\n"
                                  "    models: [a, c]\n")
                              .message()),
              HasSubstr("every module merges the same models"));
  EXPECT_THAT(std::string(plan_of("merge_method: linear\nmodels: [a]\n"
                                  "modules:\n  default:\n    models: [a]\n")
                              .message()),
              HasSubstr("one of models, slices or modules"));
  EXPECT_THAT(std::string(plan_of("merge_method: linear\nmodules:\n"
                                  "  default:\n    parameters: {}\n")
                              .message()),
              HasSubstr("needs models or slices"));
  EXPECT_THAT(std::string(plan_of("merge_method: linear\nmodules:\n"
                                  "  default:\n    models:\n"
                                  "      - model: a\n"
                                  "        parameters: {weight: 1e300}\n")
                              .message()),
              HasSubstr("in module 'default'"));
}

TEST(ModelModulesTest, ParametersComeFromTheMostSpecificLevel) {
  const std::string dir = testing::TempDir("modules_levels");
  testing::WriteModel(dir + "/a", Llava(1));
  testing::WriteModel(dir + "/b", Llava(3));
  // slerp's t per module (read per tensor); a slice's t under the source's
  // filter list that matches nothing (mergekit: falls to the slice's).
  auto merged = testing::Merge(dir, R"(
merge_method: slerp
base_model: a
parameters: {t: 0.0}
modules:
  default:
    parameters: {t: 0.25}
    models: [a, b]
  language_model.model.layers:
    slices:
      - sources:
          - model: a
            layer_range: [0, 2]
            parameters: {t: [{filter: nothing_matches, value: 1.0}]}
          - model: b
            layer_range: [0, 2]
        parameters: {t: 0.5}
  vision_tower.vision_model.encoder.layers:
    models: [a, b]
)");
  ASSERT_TRUE(merged.ok()) << merged.status();
  auto& m = *merged;
  // Collinear inputs: slerp is the lerp a + t (b - a).
  EXPECT_THAT(m["multi_modal_projector.linear_1.weight"], ElementsAre(1.5f));
  EXPECT_THAT(m["language_model.model.layers.0.mlp.weight"], ElementsAre(2.f));
  EXPECT_THAT(m["vision_tower.vision_model.encoder.layers.0.fc.weight"],
              ElementsAre(1.f));
}

TEST(ModelModulesTest, WholeMergeSettingsMustAgreeAcrossModules) {
  const std::string dir = testing::TempDir("modules_agree");
  testing::WriteModel(dir + "/a", Llava(2));
  testing::WriteModel(dir + "/b", Llava(4));
  const std::string modules =
      "  language_model.model.layers:\n    models: [a, b]\n"
      "    parameters: {normalize: true}\n"
      "  vision_tower.vision_model.encoder.layers:\n    models: [a, b]\n"
      "    parameters: {normalize: true}\n"
      "  default:\n    models: [a, b]\n";
  // normalize is one setting for the whole linear merge.
  auto agree = testing::Merge(
      dir, "merge_method: linear\nparameters: {normalize: true}\nmodules:\n" +
               modules);
  ASSERT_TRUE(agree.ok()) << agree.status();
  auto differ = testing::Merge(
      dir, "merge_method: linear\nparameters: {normalize: false}\nmodules:\n" +
               modules);
  ASSERT_FALSE(differ.ok());
  EXPECT_THAT(std::string(differ.status().message()),
              HasSubstr("parameter 'normalize' holds for the whole merge, but "
                        "the modules give it different values"));
  auto twice = MergeConfig::FromYaml(
      "merge_method: linear\nmodules:\n  default:\n    models: [a]\n"
      "  default:\n    models: [b]\n",
      dir);
  EXPECT_THAT(std::string(twice.status().message()),
              HasSubstr("'default' is named twice"));
}

}  // namespace
}  // namespace mergeserve
