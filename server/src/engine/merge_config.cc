#include "mergeserve/engine/merge_config.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace mergeserve {
namespace {

const std::set<std::string>& KnownParameters() {
  static const auto* kKeys = new std::set<std::string>{
      // mergekit
      "weight", "density", "gamma", "epsilon", "fisher", "gram", "normalize",
      "lambda", "rescale", "int8_mask", "t", "filter_wise", "nuslerp_flatten",
      "nuslerp_row_wise", "normalize_weights", "eps", "max_iter", "tol",
      "select_topk", "scale", "r",
      // extensions
      "semantics", "trim_scope", "keep", "sign_weighted", "consensus",
      "zero_sign", "divisor", "rescale_mode", "seed", "fisher_floor", "alpha",
      "ridge",
      // matrix and consensus methods (tsv, iso_c, iso_cts, consensus_*)
      "svd", "sv_reduction", "common_space_fraction", "tall_mask_lambda",
      "consensus_k",
      // data-aware steps (run by the service)
      "fisher_mode", "examples", "batch_size", "ri_method", "steps", "lr",
      "weight_decay",
      // which tensors are merged (a regex; default: every floating tensor
      // of the base)
      "merge_tensors"};
  return *kKeys;
}

absl::Status Invalid(const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat("config: ", msg));
}

// What one parse may still read; aliases are charged each time they are
// walked, so the cost of a document is what its expansion costs.
struct Budget {
  const ConfigLimits& limits;
  int64_t values_left;
  absl::Status Charge(int64_t n) {
    values_left -= n;
    if (values_left < 0) {
      return Invalid(absl::StrCat(
          "the document expands to more than ", limits.max_values,
          " values (YAML aliases count every time they are used)"));
    }
    return absl::OkStatus();
  }
};

// yaml-cpp reports errors by exception; they stop here.
absl::StatusOr<ParamValue> ParseValue(const YAML::Node& node,
                                      const std::string& key, Budget& budget) {
  try {
    MS_RETURN_IF_ERROR(budget.Charge(1));
    if (node.IsScalar()) {
      const std::string s = node.Scalar();
      if (node.Tag() != "!" && node.Tag() != "tag:yaml.org,2002:str") {
        bool b;
        if (YAML::convert<bool>::decode(node, b)) {
          if (s == "true" || s == "false" || s == "True" || s == "False" ||
              s == "yes" || s == "no") {
            return ParamValue::Bool(b);
          }
        }
        double d;
        if (YAML::convert<double>::decode(node, d)) {
          if (!std::isfinite(d)) {
            return Invalid(absl::StrCat("'", key, "' must be finite, got ", s));
          }
          return ParamValue::Number(d);
        }
      }
      return ParamValue::String(s);
    }
    if (node.IsSequence()) {
      if (node.size() == 0)
        return Invalid(absl::StrCat("'", key, "' is an empty list"));
      if (node.size() > budget.limits.max_list_values) {
        return Invalid(
            absl::StrCat("'", key, "' has ", node.size(), " entries; at most ",
                         budget.limits.max_list_values, " are allowed"));
      }
      MS_RETURN_IF_ERROR(budget.Charge(static_cast<int64_t>(node.size())));
      if (node[0].IsMap()) {
        ParamValue::FilterList filters;
        for (const auto& item : node) {
          if (!item.IsMap() || !item["value"]) {
            return Invalid(
                absl::StrCat("'", key, "': each filter entry needs a value"));
          }
          ParamValue::FilterEntry e;
          for (const auto& kv : item) {
            const std::string k = kv.first.as<std::string>();
            if (k != "filter" && k != "value") {
              return Invalid(absl::StrCat("'", key, "': unknown key '", k,
                                          "' in filter entry"));
            }
          }
          if (item["filter"]) e.filter = item["filter"].as<std::string>();
          MS_ASSIGN_OR_RETURN(ParamValue v,
                              ParseValue(item["value"], key, budget));
          if (v.is_filters()) {
            return Invalid(absl::StrCat("'", key, "': nested filter lists"));
          }
          e.value.push_back(std::move(v));
          filters.push_back(std::move(e));
        }
        return ParamValue::OfFilters(std::move(filters));
      }
      std::vector<double> points;
      for (const auto& item : node) {
        double d;
        if (!item.IsScalar() || !YAML::convert<double>::decode(item, d)) {
          return Invalid(
              absl::StrCat("'", key, "': a gradient is a list of numbers"));
        }
        if (!std::isfinite(d)) {
          return Invalid(absl::StrCat("'", key, "' must be finite"));
        }
        points.push_back(d);
      }
      return ParamValue::OfGradient(std::move(points));
    }
  } catch (const YAML::Exception& e) {
    return Invalid(absl::StrCat("'", key, "': ", e.what()));
  }
  return Invalid(absl::StrCat("'", key, "' has an unsupported value"));
}

absl::StatusOr<ParamMap> ParseParams(const YAML::Node& node,
                                     const std::string& where, bool per_model,
                                     Budget& budget) {
  ParamMap out;
  if (!node || node.IsNull()) return out;
  if (!node.IsMap()) return Invalid(where + " parameters must be a mapping");
  for (const auto& kv : node) {
    MS_RETURN_IF_ERROR(budget.Charge(1));
    const std::string key = kv.first.as<std::string>();
    if (!IsKnownParameter(key)) {
      return Invalid(absl::StrCat(
          "unknown parameter '", Abbreviate(key), "' in ", where,
          " (known: ", absl::StrJoin(KnownParameters(), ", "), ")"));
    }
    if (!per_model && IsPerModelOnlyParameter(key)) {
      return Invalid(absl::StrCat("parameter '", key,
                                  "' names a checkpoint and must be given per "
                                  "model"));
    }
    MS_ASSIGN_OR_RETURN(out[key], ParseValue(kv.second, key, budget));
  }
  return out;
}

absl::StatusOr<DType> ParseDType(const YAML::Node& node, const char* key) {
  const std::string s = node.as<std::string>();
  auto d = DTypeFromConfigName(s);
  if (!d) {
    return Invalid(absl::StrCat("'", key, "': unknown dtype '", Abbreviate(s),
                                "' (use bfloat16, float16, float32 or "
                                "float64)"));
  }
  return *d;
}

// mergekit's slices: [{sources: [{model, layer_range: [a, b], parameters}],
// parameters}].
absl::StatusOr<std::vector<SliceSpec>> ParseSlices(const YAML::Node& node,
                                                   Budget& budget) {
  if (!node.IsSequence() || node.size() == 0) {
    return Invalid("slices must be a non-empty list");
  }
  std::vector<SliceSpec> out;
  size_t sources_seen = 0;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node s = node[i];
    MS_RETURN_IF_ERROR(budget.Charge(1));
    if (!s.IsMap())
      return Invalid(absl::StrCat("slices[", i, "] must be a mapping"));
    for (const auto& kv : s) {
      const std::string key = kv.first.as<std::string>();
      if (key != "sources" && key != "parameters" && key != "base_model") {
        return Invalid(absl::StrCat("unknown key '", Abbreviate(key),
                                    "' in slices[", i, "]"));
      }
    }
    SliceSpec slice;
    MS_ASSIGN_OR_RETURN(
        slice.parameters,
        ParseParams(s["parameters"], absl::StrCat("slices[", i, "]"), false,
                    budget));
    const YAML::Node sources = s["sources"];
    if (!sources || !sources.IsSequence() || sources.size() == 0) {
      return Invalid(
          absl::StrCat("slices[", i, "] needs a non-empty sources list"));
    }
    for (size_t j = 0; j < sources.size(); ++j) {
      const YAML::Node src = sources[j];
      const std::string where =
          absl::StrCat("slices[", i, "].sources[", j, "]");
      MS_RETURN_IF_ERROR(budget.Charge(1));
      if (++sources_seen > budget.limits.max_models) {
        return Invalid(absl::StrCat("slices name more than ",
                                    budget.limits.max_models, " sources"));
      }
      if (!src.IsMap() || !src["model"] || !src["model"].IsScalar()) {
        return Invalid(absl::StrCat(where, " needs 'model: NAME_OR_PATH'"));
      }
      for (const auto& kv : src) {
        const std::string key = kv.first.as<std::string>();
        if (key != "model" && key != "layer_range" && key != "parameters") {
          return Invalid(
              absl::StrCat("unknown key '", Abbreviate(key), "' in ", where));
        }
      }
      SliceSource source;
      source.model = src["model"].as<std::string>();
      const YAML::Node range = src["layer_range"];
      if (!range || !range.IsSequence() || range.size() != 2 ||
          !range[0].IsScalar() || !range[1].IsScalar()) {
        return Invalid(
            absl::StrCat(where, " needs 'layer_range: [FIRST, END)'"));
      }
      try {
        source.layer_begin = range[0].as<int64_t>();
        source.layer_end = range[1].as<int64_t>();
      } catch (const YAML::Exception&) {
        return Invalid(
            absl::StrCat(where, ": layer_range takes two whole numbers"));
      }
      if (source.layer_begin < 0 || source.layer_end <= source.layer_begin ||
          source.layer_end > 100000) {
        return Invalid(absl::StrCat(where, ": layer_range [",
                                    source.layer_begin, ", ", source.layer_end,
                                    ") is empty or out of range"));
      }
      MS_ASSIGN_OR_RETURN(
          source.parameters,
          ParseParams(src["parameters"],
                      absl::StrCat("model '", Abbreviate(source.model), "'"),
                      true, budget));
      if (!slice.sources.empty() &&
          source.layer_end - source.layer_begin !=
              slice.sources[0].layer_end - slice.sources[0].layer_begin) {
        return Invalid(absl::StrCat(
            where, ": every source of a slice has the same number of layers"));
      }
      slice.sources.push_back(std::move(source));
    }
    out.push_back(std::move(slice));
  }
  return out;
}

// A plain string scalar, or an error naming `where`.
absl::StatusOr<std::string> StringAt(const YAML::Node& node,
                                     const std::string& where) {
  if (!node || !node.IsScalar() || node.Scalar().empty()) {
    return Invalid(absl::StrCat(where, " must be a non-empty string"));
  }
  return node.Scalar();
}

// mergekit's tokenizer/config.py: `source:` of a token is a model, or
// {kind: zero}, or {kind: model_token, model, token_id | token}.
absl::StatusOr<TokenSourceSpec> ParseTokenSource(const YAML::Node& node,
                                                 const std::string& where) {
  TokenSourceSpec out;
  if (node.IsScalar()) {
    MS_ASSIGN_OR_RETURN(out.model, StringAt(node, where));
    return out;
  }
  if (!node.IsMap()) {
    return Invalid(absl::StrCat(
        where, " must be a model, {kind: zero} or {kind: model_token, ...}"));
  }
  MS_ASSIGN_OR_RETURN(std::string kind,
                      StringAt(node["kind"], absl::StrCat(where, ".kind")));
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (key != "kind" && key != "model" && key != "token_id" &&
        key != "token") {
      return Invalid(
          absl::StrCat("unknown key '", Abbreviate(key), "' in ", where));
    }
  }
  if (kind == "zero") {
    if (node.size() != 1) {
      return Invalid(absl::StrCat(where, ": {kind: zero} takes no other keys"));
    }
    out.kind = TokenSourceSpec::Kind::kZero;
    return out;
  }
  if (kind != "model_token") {
    return Invalid(absl::StrCat(where,
                                ": kind must be zero or model_token, got '",
                                Abbreviate(kind), "'"));
  }
  out.kind = TokenSourceSpec::Kind::kModelToken;
  MS_ASSIGN_OR_RETURN(out.model,
                      StringAt(node["model"], absl::StrCat(where, ".model")));
  if (static_cast<bool>(node["token_id"]) == static_cast<bool>(node["token"])) {
    return Invalid(
        absl::StrCat(where, ": model_token takes token_id or token (one)"));
  }
  if (node["token_id"]) {
    try {
      out.token_id = node["token_id"].as<int64_t>();
    } catch (const YAML::Exception&) {
      return Invalid(absl::StrCat(where, ".token_id must be a whole number"));
    }
    if (*out.token_id < 0) {
      return Invalid(absl::StrCat(where, ".token_id must be >= 0"));
    }
  } else {
    MS_ASSIGN_OR_RETURN(std::string t,
                        StringAt(node["token"], absl::StrCat(where, ".token")));
    out.token = std::move(t);
  }
  return out;
}

absl::StatusOr<TokenizerSpec> ParseTokenizer(const YAML::Node& node,
                                             Budget& budget) {
  TokenizerSpec out;
  if (!node.IsMap()) {
    return Invalid(
        "tokenizer must be a mapping {source, tokens, "
        "pad_to_multiple_of}");
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (key != "source" && key != "tokens" && key != "pad_to_multiple_of") {
      return Invalid(
          absl::StrCat("unknown key '", Abbreviate(key), "' in tokenizer"));
    }
  }
  if (node["source"]) {
    MS_ASSIGN_OR_RETURN(out.source,
                        StringAt(node["source"], "tokenizer.source"));
  }
  if (node["pad_to_multiple_of"] && !node["pad_to_multiple_of"].IsNull()) {
    try {
      out.pad_to_multiple_of = node["pad_to_multiple_of"].as<int64_t>();
    } catch (const YAML::Exception&) {
      out.pad_to_multiple_of = -1;
    }
    if (out.pad_to_multiple_of < 1 || out.pad_to_multiple_of > (1 << 20)) {
      return Invalid(
          "tokenizer.pad_to_multiple_of must be a whole number in [1, "
          "1048576]");
    }
  }
  const YAML::Node tokens = node["tokens"];
  if (tokens && !tokens.IsNull()) {
    if (!tokens.IsMap()) {
      return Invalid("tokenizer.tokens must map each token to its settings");
    }
    if (tokens.size() > budget.limits.max_list_values) {
      return Invalid(absl::StrCat("tokenizer.tokens names more than ",
                                  budget.limits.max_list_values, " tokens"));
    }
    for (const auto& kv : tokens) {
      MS_RETURN_IF_ERROR(budget.Charge(1));
      TokenSpec t;
      MS_ASSIGN_OR_RETURN(t.token, StringAt(kv.first, "a token under tokens"));
      const std::string where =
          absl::StrCat("tokenizer.tokens['", Abbreviate(t.token), "']");
      const YAML::Node v = kv.second;
      if (!v.IsNull()) {
        if (!v.IsMap()) {
          return Invalid(
              absl::StrCat(where, " must be a mapping {source, force}"));
        }
        for (const auto& e : v) {
          const std::string key = e.first.as<std::string>();
          if (key != "source" && key != "force") {
            return Invalid(
                absl::StrCat("unknown key '", Abbreviate(key), "' in ", where));
          }
        }
        if (v["source"] && !v["source"].IsNull()) {
          MS_ASSIGN_OR_RETURN(
              t.source,
              ParseTokenSource(v["source"], absl::StrCat(where, ".source")));
        }
        if (v["force"]) {
          if (!YAML::convert<bool>::decode(v["force"], t.force)) {
            return Invalid(absl::StrCat(where, ".force must be true or false"));
          }
        }
      }
      for (const TokenSpec& seen : out.tokens) {
        if (seen.token == t.token) {
          return Invalid(absl::StrCat(where, " is named twice"));
        }
      }
      out.tokens.push_back(std::move(t));
    }
  }
  return out;
}

// mergekit's models: [NAME | {model, parameters}]; `where` prefixes errors
// ("modules.vision_tower.").
absl::StatusOr<std::vector<ModelEntry>> ParseModels(const YAML::Node& models,
                                                    const std::string& where,
                                                    Budget& budget) {
  if (!models || !models.IsSequence() || models.size() == 0) {
    return Invalid(
        absl::StrCat(where, "models (or slices) must be a non-empty list"));
  }
  if (models.size() > budget.limits.max_models) {
    return Invalid(absl::StrCat(where, "models lists ", models.size(),
                                " entries; at most ", budget.limits.max_models,
                                " are allowed"));
  }
  std::vector<ModelEntry> out;
  for (size_t i = 0; i < models.size(); ++i) {
    const YAML::Node m = models[i];
    MS_RETURN_IF_ERROR(budget.Charge(1));
    ModelEntry e;
    if (m.IsScalar()) {
      e.model = m.as<std::string>();
    } else if (m.IsMap()) {
      for (const auto& kv : m) {
        const std::string key = kv.first.as<std::string>();
        if (key != "model" && key != "parameters") {
          return Invalid(absl::StrCat("unknown key '", Abbreviate(key), "' in ",
                                      where, "models[", i, "]"));
        }
      }
      if (!m["model"] || !m["model"].IsScalar()) {
        return Invalid(
            absl::StrCat(where, "models[", i, "] needs 'model: NAME_OR_PATH'"));
      }
      e.model = m["model"].as<std::string>();
      MS_ASSIGN_OR_RETURN(
          e.parameters,
          ParseParams(m["parameters"],
                      absl::StrCat("model '", Abbreviate(e.model), "'"), true,
                      budget));
    } else {
      return Invalid(absl::StrCat(where, "models[", i, "] must be a mapping"));
    }
    out.push_back(std::move(e));
  }
  return out;
}

// mergekit's modules: {NAME: {models | slices, parameters}}.
absl::StatusOr<std::vector<ModuleSpec>> ParseModules(const YAML::Node& node,
                                                     Budget& budget) {
  if (!node.IsMap() || node.size() == 0) {
    return Invalid("modules must be a non-empty mapping of module names");
  }
  std::vector<ModuleSpec> out;
  for (const auto& kv : node) {
    MS_RETURN_IF_ERROR(budget.Charge(1));
    ModuleSpec m;
    if (!kv.first.IsScalar()) return Invalid("a module name must be a string");
    m.name = kv.first.as<std::string>();
    const std::string where = absl::StrCat("modules.", Abbreviate(m.name), ".");
    const YAML::Node& def = kv.second;
    if (!def.IsMap()) return Invalid(absl::StrCat(where, " must be a mapping"));
    for (const auto& entry : def) {
      const std::string key = entry.first.as<std::string>();
      if (key != "models" && key != "slices" && key != "parameters") {
        return Invalid(
            absl::StrCat("unknown key '", Abbreviate(key), "' in ", where));
      }
    }
    if (static_cast<bool>(def["models"]) == static_cast<bool>(def["slices"])) {
      return Invalid(absl::StrCat(where, " needs models or slices (one)"));
    }
    MS_ASSIGN_OR_RETURN(m.parameters,
                        ParseParams(def["parameters"], where, false, budget));
    if (def["slices"]) {
      MS_ASSIGN_OR_RETURN(m.slices, ParseSlices(def["slices"], budget));
    } else {
      MS_ASSIGN_OR_RETURN(m.models, ParseModels(def["models"], where, budget));
    }
    out.push_back(std::move(m));
  }
  std::stable_sort(
      out.begin(), out.end(),
      [](const ModuleSpec& a, const ModuleSpec& b) { return a.name < b.name; });
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].name == out[i - 1].name) {
      return Invalid(absl::StrCat("modules: '", Abbreviate(out[i].name),
                                  "' is named twice"));
    }
  }
  return out;
}

absl::StatusOr<MergeConfig> ParseConfig(const YAML::Node& root,
                                        const std::string& source_dir,
                                        Budget& budget) {
  if (!root.IsMap()) return Invalid("the document must be a mapping");
  static const std::set<std::string> kTop = {
      "name",      "merge_method",     "base_model",    "models",
      "slices",    "parameters",       "dtype",         "out_dtype",
      "tokenizer", "tokenizer_source", "chat_template", "modules"};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (!kTop.count(key)) {
      return Invalid(absl::StrCat("unknown key '", Abbreviate(key), "'"));
    }
  }
  MergeConfig c;
  c.source_dir = source_dir;
  if (root["name"]) {
    if (!root["name"].IsScalar() || root["name"].as<std::string>().empty()) {
      return Invalid("name must be a non-empty string");
    }
    c.name = root["name"].as<std::string>();
  }
  if (!root["merge_method"]) return Invalid("missing merge_method");
  c.merge_method = root["merge_method"].as<std::string>();
  if (root["base_model"] && !root["base_model"].IsNull()) {
    if (!root["base_model"].IsScalar()) {
      return Invalid("base_model must be a model name or path");
    }
    c.base_model = root["base_model"].as<std::string>();
  }
  if (root["dtype"]) {
    MS_ASSIGN_OR_RETURN(c.dtype, ParseDType(root["dtype"], "dtype"));
  }
  if (root["out_dtype"]) {
    MS_ASSIGN_OR_RETURN(c.out_dtype,
                        ParseDType(root["out_dtype"], "out_dtype"));
  }
  MS_ASSIGN_OR_RETURN(c.parameters,
                      ParseParams(root["parameters"], "global", false, budget));
  const bool has_source =
      root["tokenizer_source"] && !root["tokenizer_source"].IsNull();
  const bool has_tokenizer = root["tokenizer"] && !root["tokenizer"].IsNull();
  if (has_source && has_tokenizer) {
    return Invalid("give tokenizer_source or tokenizer, not both");
  }
  if (has_source) {
    c.tokenizer.emplace();
    MS_ASSIGN_OR_RETURN(c.tokenizer->source,
                        StringAt(root["tokenizer_source"], "tokenizer_source"));
  } else if (has_tokenizer) {
    MS_ASSIGN_OR_RETURN(c.tokenizer, ParseTokenizer(root["tokenizer"], budget));
  }
  if (root["chat_template"] && !root["chat_template"].IsNull()) {
    MS_ASSIGN_OR_RETURN(c.chat_template,
                        StringAt(root["chat_template"], "chat_template"));
  }
  if (root["slices"] && !root["modules"]) {
    if (root["models"]) return Invalid("give models or slices, not both");
    MS_ASSIGN_OR_RETURN(c.slices, ParseSlices(root["slices"], budget));
    return c;
  }
  if (root["modules"]) {
    if (root["models"] || root["slices"]) {
      return Invalid("give one of models, slices or modules");
    }
    MS_ASSIGN_OR_RETURN(c.modules, ParseModules(root["modules"], budget));
    return c;
  }
  MS_ASSIGN_OR_RETURN(c.models, ParseModels(root["models"], "", budget));
  return c;
}

}  // namespace

bool IsKnownParameter(const std::string& key) {
  return KnownParameters().count(key) > 0;
}

bool IsPerModelOnlyParameter(const std::string& key) {
  return key == "fisher" || key == "gram";
}

absl::StatusOr<MergeConfig> MergeConfig::FromYaml(const std::string& text,
                                                  const std::string& source_dir,
                                                  const ConfigLimits& limits) {
  if (text.size() > limits.max_text_bytes) {
    return Invalid(absl::StrCat("the document is ", text.size(),
                                " bytes; at most ", limits.max_text_bytes,
                                " are allowed"));
  }
  MS_ASSIGN_OR_RETURN(std::vector<MergeConfig> all,
                      AllFromYaml(text, source_dir, limits));
  if (all.size() != 1 || all[0].name) {
    return Invalid(absl::StrCat(
        "the file holds ", all.size(), " merge", all.size() == 1 ? "" : "s",
        all[0].name ? " (a named stage)" : "",
        "; several merges in one file run as a merge job or with "
        "`mergeserve merge`, and this request takes one merge"));
  }
  all[0].source_text = text;
  return std::move(all[0]);
}

absl::StatusOr<std::vector<MergeConfig>> MergeConfig::AllFromYaml(
    const std::string& text, const std::string& source_dir,
    const ConfigLimits& limits) {
  if (text.size() > limits.max_text_bytes) {
    return Invalid(absl::StrCat("the document is ", text.size(),
                                " bytes; at most ", limits.max_text_bytes,
                                " are allowed"));
  }
  Budget budget{limits, limits.max_values};
  // Documents split at column-0 "---" (and "...") lines, which YAML does
  // not allow inside a document, each parsed on its own. (yaml-cpp's
  // LoadAll can loop forever on malformed input; the fuzzer found one.)
  std::vector<std::string> pieces(1);
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + at, end - at);
    const bool start =
        line.substr(0, 3) == "---" && (line.size() == 3 || line[3] == ' ' ||
                                       line[3] == '\t' || line[3] == '\r');
    const bool finish = line.substr(0, 3) == "..." &&
                        (line.size() == 3 || line[3] == ' ' || line[3] == '\r');
    if (start || finish) {
      if (pieces.size() > 64) return Invalid("more than 64 merges in one file");
      pieces.emplace_back(start ? std::string(line.substr(3)) + "\n" : "");
    } else {
      pieces.back().append(line).append("\n");
    }
    at = end + 1;
  }
  try {
    std::vector<MergeConfig> out;
    for (const std::string& piece : pieces) {
      const YAML::Node doc = YAML::Load(piece);
      if (doc.IsNull()) continue;  // empty, or only comments
      if (out.size() >= 64) return Invalid("more than 64 merges in one file");
      MS_ASSIGN_OR_RETURN(MergeConfig c, ParseConfig(doc, source_dir, budget));
      out.push_back(std::move(c));
    }
    if (out.empty()) return Invalid("the document must be a mapping");
    return out;
  } catch (const YAML::Exception& e) {
    return Invalid(e.what());
  }
}

absl::StatusOr<MergeConfig> MergeConfig::FromYamlFile(
    const std::string& path, const ConfigLimits& limits) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read config ", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto parent = std::filesystem::path(path).parent_path();
  return FromYaml(ss.str(), parent.empty() ? "." : parent.string(), limits);
}

namespace {

// The shortest decimal that reads back as exactly `v`.
std::string ExactNumber(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // Keep it a float for YAML readers that care ("1" reads as an int).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

std::string Quoted(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c == 0x7f) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\x%02x", c);
      out += esc;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out + "\"";
}

// A string as YAML: plain when it reads back as the same string, quoted
// otherwise (numbers, booleans, nulls and anything with syntax in it).
std::string Scalar(const std::string& s) {
  static const std::set<std::string> kSpecial = {
      "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"};
  bool plain = !s.empty() &&
               (std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_');
  for (char c : s) {
    plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
                      c == '-' || c == '.' || c == '/');
  }
  std::string lower = s;
  for (char& c : lower) c = static_cast<char>(std::tolower(c));
  if (plain && !kSpecial.count(lower)) return s;
  return Quoted(s);
}

std::string ValueYaml(const ParamValue& v) {
  if (v.is_number()) return ExactNumber(*v.ResolveNumber("", "", 0));
  if (v.is_bool()) return *v.AsBool("") ? "true" : "false";
  if (v.is_string()) return Scalar(*v.AsString(""));
  if (v.is_gradient()) {
    std::string out = "[";
    const auto& points = v.gradient();
    for (size_t i = 0; i < points.size(); ++i) {
      absl::StrAppend(&out, i ? ", " : "", ExactNumber(points[i]));
    }
    return out + "]";
  }
  std::string out = "[";
  const auto& filters = v.filters();
  for (size_t i = 0; i < filters.size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", "{");
    if (filters[i].filter) {
      absl::StrAppend(&out, "filter: ", Scalar(*filters[i].filter), ", ");
    }
    absl::StrAppend(&out, "value: ", ValueYaml(filters[i].value[0]), "}");
  }
  return out + "]";
}

void AppendParams(const ParamMap& params, const std::string& indent,
                  std::string* out) {
  for (const auto& [key, value] : params) {
    absl::StrAppend(out, indent, key, ": ", ValueYaml(value), "\n");
  }
}

void AppendSlices(const std::vector<SliceSpec>& slices, const std::string& in,
                  std::string* out) {
  absl::StrAppend(out, in, "slices:\n");
  for (const SliceSpec& slice : slices) {
    absl::StrAppend(out, in, "  - sources:\n");
    for (const SliceSource& src : slice.sources) {
      absl::StrAppend(out, in, "      - model: ", Scalar(src.model), "\n", in,
                      "        layer_range: [", src.layer_begin, ", ",
                      src.layer_end, "]\n");
      if (!src.parameters.empty()) {
        absl::StrAppend(out, in, "        parameters:\n");
        AppendParams(src.parameters, in + "          ", out);
      }
    }
    if (!slice.parameters.empty()) {
      absl::StrAppend(out, in, "    parameters:\n");
      AppendParams(slice.parameters, in + "      ", out);
    }
  }
}

void AppendModels(const std::vector<ModelEntry>& models, const std::string& in,
                  std::string* out) {
  absl::StrAppend(out, in, "models:\n");
  for (const ModelEntry& m : models) {
    absl::StrAppend(out, in, "  - model: ", Scalar(m.model), "\n");
    if (!m.parameters.empty()) {
      absl::StrAppend(out, in, "    parameters:\n");
      AppendParams(m.parameters, in + "      ", out);
    }
  }
}

}  // namespace

std::set<std::string> MergeConfig::References() const {
  std::set<std::string> refs;
  auto add = [&](const std::string& ref) {
    const size_t plus = ref.find('+');
    refs.insert(ref.substr(0, plus));
    if (plus != std::string::npos) refs.insert(ref.substr(plus + 1));
  };
  if (base_model) add(*base_model);
  for (const SliceSpec& s : slices) {
    for (const SliceSource& src : s.sources) add(src.model);
  }
  auto add_models = [&](const std::vector<ModelEntry>& entries) {
    for (const ModelEntry& m : entries) {
      add(m.model);
      for (const auto& [key, value] : m.parameters) {
        if (IsPerModelOnlyParameter(key) && value.is_string()) {
          refs.insert(*value.AsString(key));
        }
      }
    }
  };
  add_models(models);
  for (const ModuleSpec& m : modules) {
    add_models(m.models);
    for (const SliceSpec& s : m.slices) {
      for (const SliceSource& src : s.sources) add(src.model);
    }
  }
  if (tokenizer && tokenizer->source != "base" &&
      tokenizer->source != "union") {
    add(tokenizer->source);
  }
  return refs;
}

std::string MergeConfig::ToYaml() const {
  std::string out;
  if (name) absl::StrAppend(&out, "name: ", Scalar(*name), "\n");
  absl::StrAppend(&out, "merge_method: ", Scalar(merge_method), "\n");
  if (base_model) {
    absl::StrAppend(&out, "base_model: ", Scalar(*base_model), "\n");
  }
  if (dtype)
    absl::StrAppend(&out, "dtype: ", std::string(TorchDTypeName(*dtype)), "\n");
  if (out_dtype) {
    absl::StrAppend(
        &out, "out_dtype: ", std::string(TorchDTypeName(*out_dtype)), "\n");
  }
  if (!parameters.empty()) {
    absl::StrAppend(&out, "parameters:\n");
    AppendParams(parameters, "  ", &out);
  }
  if (tokenizer) {
    absl::StrAppend(&out, "tokenizer:\n  source: ", Scalar(tokenizer->source),
                    "\n");
    if (tokenizer->pad_to_multiple_of > 0) {
      absl::StrAppend(
          &out, "  pad_to_multiple_of: ", tokenizer->pad_to_multiple_of, "\n");
    }
    if (!tokenizer->tokens.empty()) absl::StrAppend(&out, "  tokens:\n");
    for (const TokenSpec& t : tokenizer->tokens) {
      absl::StrAppend(&out, "    ", Quoted(t.token), ": {");
      if (t.source) {
        const TokenSourceSpec& src = *t.source;
        switch (src.kind) {
          case TokenSourceSpec::Kind::kModel:
            absl::StrAppend(&out, "source: ", Scalar(src.model));
            break;
          case TokenSourceSpec::Kind::kZero:
            absl::StrAppend(&out, "source: {kind: zero}");
            break;
          case TokenSourceSpec::Kind::kModelToken:
            absl::StrAppend(
                &out, "source: {kind: model_token, model: ", Scalar(src.model));
            if (src.token_id) {
              absl::StrAppend(&out, ", token_id: ", *src.token_id, "}");
            } else {
              absl::StrAppend(&out, ", token: ", Quoted(*src.token), "}");
            }
            break;
        }
        absl::StrAppend(&out, ", ");
      }
      absl::StrAppend(&out, "force: ", t.force ? "true" : "false", "}\n");
    }
  }
  if (chat_template) {
    absl::StrAppend(&out, "chat_template: ", Quoted(*chat_template), "\n");
  }
  if (!modules.empty()) {
    absl::StrAppend(&out, "modules:\n");
    for (const ModuleSpec& m : modules) {
      absl::StrAppend(&out, "  ", Scalar(m.name), ":\n");
      if (!m.parameters.empty()) {
        absl::StrAppend(&out, "    parameters:\n");
        AppendParams(m.parameters, "      ", &out);
      }
      if (!m.slices.empty()) {
        AppendSlices(m.slices, "    ", &out);
      } else {
        AppendModels(m.models, "    ", &out);
      }
    }
  } else if (!slices.empty()) {
    AppendSlices(slices, "", &out);
  } else {
    AppendModels(models, "", &out);
  }
  return out;
}

std::string ParamYaml(const ParamValue& value) { return ValueYaml(value); }

}  // namespace mergeserve
