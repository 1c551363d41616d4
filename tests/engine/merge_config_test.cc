#include "mergeserve/engine/merge_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/engine/merge_plan.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/engine/tensor_filter.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

TEST(MergeConfigTest, ParsesTheMergekitVocabulary) {
  auto c = MergeConfig::FromYaml(R"(
merge_method: ties
base_model: base
models:
  - model: a
    parameters:
      density: [0.2, 0.6]
      weight:
        - filter: mlp
          value: 0.5
        - value: 1.0
  - model: b
parameters:
  normalize: false
  lambda: 1.3
  semantics: paper
dtype: bfloat16
out_dtype: float16
)",
                                 "/cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->merge_method, "ties");
  EXPECT_EQ(*c->base_model, "base");
  ASSERT_EQ(c->models.size(), 2u);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->out_dtype, DType::kF16);
  const ParamValue& d = c->models[0].parameters.at("density");
  EXPECT_TRUE(d.is_gradient());
  EXPECT_DOUBLE_EQ(*d.ResolveNumber("density", "x", 0.5), 0.4);
  const ParamValue& w = c->models[0].parameters.at("weight");
  EXPECT_DOUBLE_EQ(*w.ResolveNumber("weight", "model.layers.0.mlp.up", 0), 0.5);
  EXPECT_DOUBLE_EQ(*w.ResolveNumber("weight", "model.layers.0.attn.q", 0), 1.0);
  EXPECT_TRUE(c->parameters.at("normalize").is_bool());
  EXPECT_EQ(*c->parameters.at("semantics").AsString("semantics"), "paper");
}

TEST(MergeConfigTest, UnknownKeysAreErrorsNamingThem) {
  auto c = MergeConfig::FromYaml(
      "merge_method: ties\nmodels: [a]\nparameters: {densty: 0.5}\n", ".");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("unknown parameter 'densty'"));
  c = MergeConfig::FromYaml("merge_method: ties\nmodels: [a]\nslices: []\n",
                            ".");
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("give models or slices, not both"));
  c = MergeConfig::FromYaml(
      "merge_method: ties\nmodels:\n  - model: a\n    extra: 1\n", ".");
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("unknown key 'extra'"));
  c = MergeConfig::FromYaml(
      "merge_method: ties\nmodels: [a]\nparameters: {fisher: f}\n", ".");
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("must be given per model"));
  c = MergeConfig::FromYaml("merge_method: [ties\n", ".");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  c = MergeConfig::FromYaml("models: [a]\n", ".");
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("missing merge_method"));
  c = MergeConfig::FromYaml("merge_method: ties\nmodels: [a]\ndtype: int4\n",
                            ".");
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("unknown dtype 'int4'"));
}

TEST(MergeConfigTest, SlicesParseRoundTripAndBadRangesAreNamed) {
  const char* yaml = R"(
merge_method: passthrough
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
  - sources:
      - model: b
        layer_range: [1, 3]
        parameters:
          scale:
            - filter: down_proj
              value: 0.5
            - value: 1.0
    parameters: {weight: 2}
)";
  auto c = MergeConfig::FromYaml(yaml, ".");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->slices.size(), 2u);
  EXPECT_EQ(c->slices[1].sources[0].model, "b");
  EXPECT_EQ(c->slices[1].sources[0].layer_begin, 1);
  EXPECT_EQ(c->slices[1].sources[0].layer_end, 3);
  EXPECT_TRUE(c->slices[1].sources[0].parameters.count("scale"));
  EXPECT_TRUE(c->slices[1].parameters.count("weight"));
  // The canonical form reads back to the same canonical form.
  auto again = MergeConfig::FromYaml(c->ToYaml(), ".");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << c->ToYaml();
  EXPECT_EQ(again->ToYaml(), c->ToYaml());
  for (const auto& [text, error] :
       std::vector<std::pair<std::string, std::string>>{
           {"slices: [{sources: [{model: a}]}]", "needs 'layer_range"},
           {"slices: [{sources: [{model: a, layer_range: [2, 2]}]}]",
            "is empty or out of range"},
           {"slices: [{sources: [{model: a, layer_range: [0, 2]}, "
            "{model: b, layer_range: [0, 3]}]}]",
            "same number of layers"},
           {"slices: [{sources: [{model: a, layer_range: [0, 2], x: 1}]}]",
            "unknown key 'x'"},
           {"slices: [{sources: []}]", "non-empty sources"}}) {
    auto bad = MergeConfig::FromYaml("merge_method: passthrough\n" + text, ".");
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(error)) << text;
  }
}

TEST(MergeConfigTest, UnknownMethodIsAnErrorListingTheKnownOnes) {
  auto m = CreateMethod("tiez");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("unknown merge_method 'tiez'"));
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("dare_ties"));
  for (const MethodInfo& info : AllMethods()) {
    EXPECT_TRUE(CreateMethod(info.name).ok()) << info.name;
  }
}

// An anchored list aliased many times costs what that many copies cost:
// the probe's 81 KB document (a 10,000-point gradient aliased by 1,000
// models) and smaller variants stop at a named bound, fast.
std::string AliasBomb(int points, int models) {
  std::string y = "merge_method: ties\nbase_model: b\nmodels:\n";
  std::string list = "[";
  for (int i = 0; i < points; ++i)
    list += (i ? ",0." : "0.") + std::to_string(i % 10);
  list += "]";
  y += "  - model: m0\n    parameters: {weight: &g " + list + "}\n";
  for (int i = 1; i < models; ++i) {
    y +=
        "  - model: m" + std::to_string(i) + "\n    parameters: {weight: *g}\n";
  }
  return y;
}

TEST(MergeConfigTest, ACostlyDocumentStopsAtANamedBound) {
  auto c = MergeConfig::FromYaml(AliasBomb(10000, 1000), ".");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("at most 128"));
  c = MergeConfig::FromYaml(AliasBomb(10000, 10), ".");
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("10000 entries"));
  // Within every per-list bound, the expansion itself is counted.
  c = MergeConfig::FromYaml(AliasBomb(1000, 120), ".");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("aliases count every time"));
  EXPECT_TRUE(MergeConfig::FromYaml(AliasBomb(100, 10), ".").ok());
  // The document's own size.
  ConfigLimits small;
  small.max_text_bytes = 64;
  c = MergeConfig::FromYaml(
      "merge_method: ties\nmodels: [a]\n# " + std::string(100, 'x') + "\n", ".",
      small);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("at most 64"));
  // Deep nesting is refused by the parser, not by a crash.
  std::string deep = "merge_method: ties\nmodels: [a]\nparameters: {x: ";
  for (int i = 0; i < 5000; ++i) deep += "[";
  c = MergeConfig::FromYaml(deep, ".");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MergeConfigTest, NumbersMustBeFinite) {
  for (const char* v : {".inf", "-.inf", ".nan", "[1, .inf]"}) {
    auto c = MergeConfig::FromYaml(
        std::string("merge_method: linear\nmodels: [a]\nparameters: "
                    "{weight: ") +
            v + "}\n",
        ".");
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << v;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("finite")) << v;
  }
}

TEST(MergeConfigTest, CanonicalYamlReadsBackAsTheSameConfig) {
  const std::string text = R"(# a comment that is not kept
merge_method: ties
base_model: base
models:
  - model: a   # trailing
    parameters:
      density: [0.2, 0.6]
      weight:
        - filter: mlp
          value: 0.5
        - value: 1.0
  - model: "7b-model"
  - model: 'true'
parameters: {normalize: false, lambda: 0.1, semantics: paper,
             merge_tensors: '^model\.(layers|norm)\.'}
out_dtype: float16
)";
  auto c = MergeConfig::FromYaml(text, ".");
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string canonical = c->ToYaml();
  EXPECT_EQ(canonical.find("comment"), std::string::npos);
  auto back = MergeConfig::FromYaml(canonical, ".");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << canonical;
  EXPECT_EQ(back->ToYaml(), canonical);  // a fixed point
  EXPECT_EQ(back->models[1].model, "7b-model");
  EXPECT_EQ(back->models[2].model, "true");
  EXPECT_EQ(*back->parameters.at("lambda").ResolveNumber("lambda", "", 0),
            0.1);  // exactly
  EXPECT_EQ(*back->parameters.at("merge_tensors").AsString(""),
            "^model\\.(layers|norm)\\.");
  EXPECT_EQ(back->out_dtype, DType::kF16);
  EXPECT_DOUBLE_EQ(*back->models[0].parameters.at("weight").ResolveNumber(
                       "weight", "x.mlp.y", 0),
                   0.5);
}

TEST(TensorFilterTest, MatchesInLinearTimeAndRefusesWhatRe2CannotDo) {
  auto f = TensorFilter::Compile("^model\\.layers\\.(1|2)\\.");
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->Matches("model.layers.1.mlp.weight"));
  EXPECT_FALSE(f->Matches("model.layers.3.mlp.weight"));
  // Exponential for a backtracking matcher (and deep recursion for
  // std::regex); a single linear pass here.
  auto evil = TensorFilter::Compile("(a|a)*(a|a)*c");
  ASSERT_TRUE(evil.ok());
  EXPECT_FALSE(evil->Matches(std::string(100000, 'a')));
  EXPECT_EQ(TensorFilter::Compile("(?=lookahead)").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TensorFilter::Compile(std::string(2000, 'x')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParamValueTest, GradientInterpolatesPiecewiseLinearly) {
  EXPECT_DOUBLE_EQ(InterpolateGradient({0, 1, 0}, 0.25), 0.5);
  EXPECT_DOUBLE_EQ(InterpolateGradient({0, 1, 0}, 0.5), 1.0);
  EXPECT_DOUBLE_EQ(InterpolateGradient({0, 1, 0}, 1.0), 0.0);
  EXPECT_DOUBLE_EQ(InterpolateGradient({2}, 0.7), 2.0);
  auto filters =
      ParamValue::OfFilters({{std::string("mlp"), {ParamValue::Number(1)}}});
  EXPECT_FALSE(filters.ResolveNumber("w", "attn", 0).ok());  // no default entry
}

TEST(LayerIndexTest, FindsTheLayerNumber) {
  EXPECT_EQ(LayerIndexOf("model.layers.12.mlp.up_proj.weight"), 12);
  EXPECT_EQ(LayerIndexOf("layers.3.x"), 3);
  EXPECT_EQ(LayerIndexOf("model.embed_tokens.weight"), -1);
  EXPECT_EQ(LayerIndexOf("model.sublayers.2.x"), -1);
  // GPT-2's naming, and the stack a layer belongs to.
  EXPECT_EQ(LayerIndexOf("transformer.h.11.attn.c_attn.weight"), 11);
  EXPECT_EQ(LayerIndexOf("transformer.wte.weight"), -1);
  EXPECT_EQ(LayerStackOf("vision_tower.encoder.layers.2.fc1.weight"),
            "vision_tower.encoder.");
  EXPECT_EQ(LayerStackOf("transformer.h.0.ln_1.weight"), "transformer.");
  EXPECT_EQ(LayerStackOf("lm_head.weight"), "");
}

TEST(LayerIndexTest, GradientsCountTheLayersOfEachStack) {
  // A text stack of 2 layers and a vision stack of 4: layer 1 is the last
  // of the text stack (t = 1) but a third of the way up the vision one.
  const std::string dir = testing::TempDir("stacks");
  testing::TestModel base, expert;
  for (int l = 0; l < 4; ++l) {
    const std::string v = "vision.layers." + std::to_string(l) + ".w";
    base[v] = {{1}, {0}};
    expert[v] = {{1}, {3}};
    if (l < 2) {
      const std::string t = "text.layers." + std::to_string(l) + ".w";
      base[t] = {{1}, {0}};
      expert[t] = {{1}, {3}};
    }
  }
  testing::WriteModel(dir + "/base", base);
  testing::WriteModel(dir + "/e", expert);
  auto out = testing::Merge(
      dir,
      "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
      "  - model: e\n    parameters: {weight: [0, 1]}\n");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FLOAT_EQ((*out)["text.layers.1.w"][0], 3);
  EXPECT_FLOAT_EQ((*out)["vision.layers.1.w"][0], 1);
  EXPECT_FLOAT_EQ((*out)["vision.layers.3.w"][0], 3);
}

}  // namespace
}  // namespace mergeserve
