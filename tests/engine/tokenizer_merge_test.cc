// Tokenizer merges beyond the golden cases: rows found by token string,
// errors raised before any tensor is read, embeddings of different sizes
// without a tokenizer merge, chat templates and the model card.
#include "mergeserve/engine/tokenizer_merge.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/engine/executor.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// A two-column model whose embedding row of token t is {v(t), -v(t)}, with
// a WordLevel tokenizer of `vocab` (token -> id) unless `vocab` is empty.
void WriteTokModel(const std::string& dir,
                   const std::vector<std::pair<std::string, float>>& rows,
                   const std::map<std::string, int64_t>& vocab,
                   int64_t vocab_size, const json& added = json::array(),
                   const std::string& chat_template = "") {
  std::vector<float> embed;
  for (const auto& [t, v] : rows) {
    embed.push_back(v);
    embed.push_back(-v);
  }
  const int64_t n = static_cast<int64_t>(rows.size());
  testing::WriteModel(dir, {{"model.embed_tokens.weight", {{n, 2}, embed}},
                            {"lm_head.weight", {{n, 2}, embed}},
                            {"model.norm.weight", {{2}, {1, 1}}}});
  testing::WriteFile(
      dir + "/config.json",
      json{{"model_type", "llama"}, {"vocab_size", vocab_size}}.dump());
  if (vocab.empty()) return;
  json v = json::object();
  for (const auto& [t, id] : vocab) v[t] = id;
  testing::WriteFile(
      dir + "/tokenizer.json",
      json{{"version", "1.0"},
           {"added_tokens", added},
           {"model", {{"type", "WordLevel"}, {"vocab", v}, {"unk_token", "a"}}}}
          .dump());
  json cfg = {{"bos_token", "a"}, {"eos_token", "b"}};
  if (!chat_template.empty()) cfg["chat_template"] = chat_template;
  testing::WriteFile(dir + "/tokenizer_config.json", cfg.dump());
}

json ReadJson(const std::string& path) {
  return json::parse(testing::ReadFileBytes(path), nullptr, false);
}

TEST(TokenizerMergeTest, UnionFindsRowsByTokenAndAddsNewTokens) {
  const std::string dir = testing::TempDir("tok-union");
  WriteTokModel(dir + "/base", {{"a", 1}, {"b", 2}}, {{"a", 0}, {"b", 1}}, 2);
  // The expert lists the base's tokens in another order, adds a plain token
  // c and a special token <x>; row 4 is padding past its vocab_size.
  WriteTokModel(dir + "/ft",
                {{"b", 20}, {"a", 10}, {"c", 30}, {"<x>", 40}, {"pad", 99}},
                {{"b", 0}, {"a", 1}, {"c", 2}, {"pad", 4}}, 4,
                json::array({{{"id", 3},
                              {"content", "<x>"},
                              {"special", true},
                              {"normalized", false},
                              {"lstrip", false},
                              {"rstrip", false},
                              {"single_word", false}}}));
  auto out = testing::Merge(dir, R"(merge_method: linear
models:
  - {model: base, parameters: {weight: 0.5}}
  - {model: ft, parameters: {weight: 0.5}}
tokenizer_source: union
)");
  ASSERT_TRUE(out.ok()) << out.status();
  // a, b: the mean of both models' own rows; c and <x>: only ft has them,
  // so both models carry ft's row; pad is ignored (id >= vocab_size).
  EXPECT_THAT((*out)["model.embed_tokens.weight"],
              ElementsAre(5.5, -5.5, 11, -11, 30, -30, 40, -40));
  EXPECT_EQ((*out)["lm_head.weight"], (*out)["model.embed_tokens.weight"]);
  const json tok = ReadJson(dir + "/out/tokenizer.json");
  ASSERT_EQ(tok["added_tokens"].size(), 2u);
  EXPECT_EQ(tok["added_tokens"][0]["content"], "c");
  EXPECT_EQ(tok["added_tokens"][0]["id"], 2);
  EXPECT_EQ(tok["added_tokens"][0]["special"], false);
  EXPECT_EQ(tok["added_tokens"][1]["content"], "<x>");
  EXPECT_EQ(tok["added_tokens"][1]["id"], 3);
  EXPECT_EQ(tok["added_tokens"][1]["special"], true);
  EXPECT_EQ(ReadJson(dir + "/out/config.json")["vocab_size"], 4);
  const json cfg = ReadJson(dir + "/out/tokenizer_config.json");
  EXPECT_EQ(cfg["added_tokens_decoder"]["3"]["content"], "<x>");
  EXPECT_EQ(cfg["eos_token"], "b");
}

TEST(TokenizerMergeTest, ModelSourceKeepsThatTokenizerAndPads) {
  const std::string dir = testing::TempDir("tok-model");
  WriteTokModel(dir + "/base", {{"a", 1}, {"b", 2}}, {{"a", 0}, {"b", 1}}, 2);
  WriteTokModel(dir + "/ft", {{"b", 20}, {"a", 10}}, {{"b", 0}, {"a", 1}}, 2);
  auto out = testing::Merge(dir, R"(merge_method: task_arithmetic
base_model: base
models: [{model: ft, parameters: {weight: 1.0}}]
tokenizer: {source: ft, pad_to_multiple_of: 4}
)");
  ASSERT_TRUE(out.ok()) << out.status();
  // ft's order (b, a); rows 2..3 are each model's mean row.
  EXPECT_THAT((*out)["model.embed_tokens.weight"],
              ElementsAre(20, -20, 10, -10, 15, -15, 15, -15));
  EXPECT_EQ(ReadJson(dir + "/out/tokenizer.json")["model"]["vocab"]["b"], 0);
  EXPECT_EQ(ReadJson(dir + "/out/config.json")["vocab_size"], 4);
}

TEST(TokenizerMergeTest, BadTokenizerRequestsFailBeforeAnyWrite) {
  const std::string dir = testing::TempDir("tok-errors");
  WriteTokModel(dir + "/base", {{"a", 1}, {"b", 2}}, {{"a", 0}, {"b", 1}}, 2);
  WriteTokModel(dir + "/ft", {{"a", 1}, {"b", 2}}, {{"a", 0}, {"b", 1}}, 2);
  WriteTokModel(dir + "/bare", {{"a", 1}, {"b", 2}}, {}, 2);
  struct Case {
    std::string tail;
    absl::StatusCode code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"tokenizer: {tokens: {z: {source: other}}}",
       absl::StatusCode::kInvalidArgument,
       "takes its row from 'other', which is not one of the merge's models"},
      {"tokenizer: {tokens: {z: {source: ft}}}",
       absl::StatusCode::kInvalidArgument, "model 'ft' has no token 'z'"},
      {"tokenizer: {tokens: {z: {source: {kind: model_token, model: ft, "
       "token: q}}}}",
       absl::StatusCode::kInvalidArgument, "model 'ft' has no token 'q'"},
      {"tokenizer: {tokens: {z: {source: {kind: model_token, model: ft, "
       "token_id: 7}}}}",
       absl::StatusCode::kInvalidArgument, "row 7 of tensor"},
      {"tokenizer_source: bare", absl::StatusCode::kFailedPrecondition,
       "source model 'bare' has no tokenizer.json"},
      {"tokenizer_source: union\ntokenizer: {source: base}",
       absl::StatusCode::kInvalidArgument,
       "give tokenizer_source or tokenizer, not both"},
      {"tokenizer: {source: union, size: 3}",
       absl::StatusCode::kInvalidArgument, "unknown key 'size' in tokenizer"},
      {"tokenizer: {tokens: {z: {source: {kind: one}}}}",
       absl::StatusCode::kInvalidArgument, "kind must be zero or model_token"},
      {"chat_template: nonsense", absl::StatusCode::kInvalidArgument,
       "neither a named template (alpaca, chatml"},
  };
  for (const Case& c : cases) {
    auto out = testing::Merge(
        dir, "merge_method: linear\nbase_model: base\nmodels: [base, ft]\n" +
                 c.tail + "\n");
    EXPECT_EQ(out.status().code(), c.code) << c.tail;
    EXPECT_THAT(std::string(out.status().message()), HasSubstr(c.says))
        << c.tail;
    EXPECT_FALSE(std::filesystem::exists(dir + "/out")) << c.tail;
  }
  // Tokenizer files of the wrong shape, or nested past any real one, fail
  // the merge (DATA_LOSS naming the file), not the process.
  WriteTokModel(dir + "/odd", {{"a", 1}, {"b", 2}}, {}, 1);
  for (const std::string& text :
       {std::string(R"({"model":{"vocab":{"a":"0"}}})"),
        std::string(R"({"model":[]})"),
        std::string(R"({"model":{"vocab":[["a",0],5]}})"),
        std::string(R"({"model":{"vocab":{}},"normalizer":)") +
            std::string(100000, '[') + std::string(100000, ']') + "}"}) {
    testing::WriteFile(dir + "/odd/tokenizer.json", text);
    auto odd = testing::Merge(
        dir,
        "merge_method: linear\nmodels: [odd, ft]\ntokenizer_source: base\n");
    EXPECT_EQ(odd.status().code(), absl::StatusCode::kDataLoss)
        << text.substr(0, 60) << ": " << odd.status();
  }
  // A base without tokenizer.json cannot start a union.
  auto out = testing::Merge(
      dir,
      "merge_method: linear\nmodels: [bare, ft]\ntokenizer_source: union\n");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(out.status().message()),
              HasSubstr("model 'bare' has no tokenizer.json"));
}

TEST(TokenizerMergeTest, ConfigRoundTripsThroughCanonicalYaml) {
  auto c = MergeConfig::FromYaml(R"(merge_method: linear
models: [a, b]
chat_template: "{{ messages }}\n"
tokenizer:
  source: b
  pad_to_multiple_of: 8
  tokens:
    "<|im_start|>": {source: a}
    z: {source: {kind: zero}, force: true}
    y: {source: {kind: model_token, model: a, token_id: 3}}
    "x\"q": {source: {kind: model_token, model: b, token: "<s>"}}
    w:
)",
                                 ".");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->tokenizer);
  EXPECT_EQ(c->tokenizer->tokens.size(), 5u);
  EXPECT_EQ(c->tokenizer->tokens[0].token, "<|im_start|>");
  EXPECT_TRUE(c->tokenizer->tokens[1].force);
  auto again = MergeConfig::FromYaml(c->ToYaml(), ".");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << c->ToYaml();
  EXPECT_EQ(again->ToYaml(), c->ToYaml());
  EXPECT_EQ(*again->chat_template, "{{ messages }}\n");
  EXPECT_EQ(*again->tokenizer->tokens[3].source->token, "<s>");
  EXPECT_EQ(again->tokenizer->tokens[3].token, "x\"q");
}

TEST(TokenizerMergeTest, DifferentVocabSizesWithoutATokenizerMergeAreCut) {
  const std::string dir = testing::TempDir("tok-cut");
  WriteTokModel(dir + "/base", {{"a", 1}, {"b", 2}}, {{"a", 0}, {"b", 1}}, 2);
  // A ChatML-style fine-tune: two more rows than the base.
  WriteTokModel(dir + "/ft", {{"a", 3}, {"b", 4}, {"c", 5}, {"d", 6}},
                {{"a", 0}, {"b", 1}, {"c", 2}, {"d", 3}}, 4);
  // Task arithmetic keeps the base's rows (mergekit cuts the task vector).
  MergeOptions o;
  auto ta = MergeConfig::FromYaml(
      "merge_method: task_arithmetic\nbase_model: base\nmodels: [ft]\n", dir);
  ASSERT_TRUE(ta.ok());
  o.output_dir = dir + "/out";
  o.overwrite = true;
  auto summary = RunMerge(*ta, o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(summary->warnings.size(), 2u);
  EXPECT_THAT(summary->warnings[0],
              HasSubstr("merged on 2 rows (the base model's)"));
  EXPECT_THAT(testing::ReadModel(dir + "/out")["lm_head.weight"],
              ElementsAre(3, -3, 4, -4));
  // Linear takes the rows every model has; the config follows the rows.
  auto lin = testing::Merge(dir, "merge_method: linear\nmodels: [ft, base]\n");
  ASSERT_TRUE(lin.ok()) << lin.status();
  EXPECT_THAT((*lin)["model.embed_tokens.weight"], ElementsAre(2, -2, 3, -3));
  EXPECT_EQ(ReadJson(dir + "/out/config.json")["vocab_size"], 2);
  // An expert with fewer rows than the base cannot give the base's rows.
  auto fewer = testing::Merge(
      dir, "merge_method: task_arithmetic\nbase_model: ft\nmodels: [base]\n");
  EXPECT_EQ(fewer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(fewer.status().message()),
              HasSubstr("shape mismatch for tensor 'lm_head.weight'"));
}

TEST(TokenizerMergeTest, ChatTemplatesByNameLiteralAndAuto) {
  const std::string dir = testing::TempDir("tok-chat");
  const std::string zephyr = "{% for m in messages %}<|user|>{% endfor %}";
  WriteTokModel(dir + "/a", {{"a", 1}}, {{"a", 0}}, 1, json::array(), zephyr);
  WriteTokModel(dir + "/b", {{"a", 2}}, {{"a", 0}}, 1, json::array(), zephyr);
  WriteTokModel(dir + "/c", {{"a", 3}}, {{"a", 0}}, 1, json::array(),
                "{{ other template entirely }}");
  // A list of named templates whose names are not strings counts for none.
  WriteTokModel(dir + "/d", {{"a", 4}}, {{"a", 0}}, 1);
  testing::WriteFile(dir + "/d/tokenizer_config.json",
                     R"({"chat_template":[{"name":5,"template":"x"}]})");
  auto chat = [&](const std::string& t) {
    auto out = testing::Merge(
        dir, "merge_method: linear\nmodels: [c, d, a, b]\nchat_template: " + t +
                 "\n");
    EXPECT_TRUE(out.ok()) << out.status();
    return ReadJson(dir + "/out/tokenizer_config.json")
        .value("chat_template", "");
  };
  EXPECT_THAT(chat("chatml"), HasSubstr("<|im_start|>"));
  EXPECT_THAT(chat("llama3"), HasSubstr("<|start_header_id|>"));
  EXPECT_EQ(chat("auto"), zephyr);  // two of the three models use it
  EXPECT_EQ(chat("\"{{ messages[0]['content'] }}\""),
            "{{ messages[0]['content'] }}");
}

TEST(TokenizerMergeTest, OutputHasAModelCardNamingWhatWasMerged) {
  const std::string dir = testing::TempDir("tok-card");
  WriteTokModel(dir + "/base", {{"a", 1}}, {{"a", 0}}, 1);
  WriteTokModel(dir + "/ft", {{"a", 2}}, {{"a", 0}}, 1);
  ASSERT_TRUE(testing::Merge(dir,
                             "merge_method: task_arithmetic\nbase_model: "
                             "base\nmodels: [ft]\n")
                  .ok());
  const std::string card = testing::ReadFileBytes(dir + "/out/README.md");
  EXPECT_THAT(card, HasSubstr("tags:\n- mergeserve\n- merge\n"));
  // Titled alike wherever it is written (a server's result equals a
  // one-shot merge byte for byte).
  EXPECT_THAT(card, HasSubstr("# Merged model\n"));
  EXPECT_THAT(card, HasSubstr("merged using the task_arithmetic merge method "
                              "using base as a base"));
  EXPECT_THAT(card, HasSubstr("* ft\n"));
  EXPECT_THAT(card, HasSubstr("```yaml\nmerge_method: task_arithmetic\n"));
}

}  // namespace
}  // namespace mergeserve
