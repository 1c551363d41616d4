#include "mergeserve/engine/merge_config.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace mergeserve {
namespace {

const std::set<std::string>& KnownParameters() {
  static const auto* kKeys = new std::set<std::string>{
      // mergekit
      "weight", "density", "gamma", "epsilon", "fisher", "gram", "normalize",
      "lambda", "rescale", "int8_mask", "t", "filter_wise",
      // extensions
      "semantics", "trim_scope", "keep", "sign_weighted", "consensus",
      "zero_sign", "divisor", "rescale_mode", "seed", "fisher_floor", "alpha",
      "ridge",
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

// yaml-cpp reports errors by exception; they stop here.
absl::StatusOr<ParamValue> ParseValue(const YAML::Node& node,
                                      const std::string& key) {
  try {
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
        if (YAML::convert<double>::decode(node, d))
          return ParamValue::Number(d);
      }
      return ParamValue::String(s);
    }
    if (node.IsSequence()) {
      if (node.size() == 0)
        return Invalid(absl::StrCat("'", key, "' is an empty list"));
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
          MS_ASSIGN_OR_RETURN(ParamValue v, ParseValue(item["value"], key));
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
                                     const std::string& where, bool per_model) {
  ParamMap out;
  if (!node || node.IsNull()) return out;
  if (!node.IsMap()) return Invalid(where + " parameters must be a mapping");
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (!IsKnownParameter(key)) {
      return Invalid(absl::StrCat(
          "unknown parameter '", key, "' in ", where,
          " (known: ", absl::StrJoin(KnownParameters(), ", "), ")"));
    }
    if (!per_model && IsPerModelOnlyParameter(key)) {
      return Invalid(absl::StrCat("parameter '", key,
                                  "' names a checkpoint and must be given per "
                                  "model"));
    }
    MS_ASSIGN_OR_RETURN(out[key], ParseValue(kv.second, key));
  }
  return out;
}

absl::StatusOr<DType> ParseDType(const YAML::Node& node, const char* key) {
  const std::string s = node.as<std::string>();
  auto d = DTypeFromConfigName(s);
  if (!d) {
    return Invalid(absl::StrCat("'", key, "': unknown dtype '", s,
                                "' (use bfloat16, float16, float32 or "
                                "float64)"));
  }
  return *d;
}

absl::StatusOr<MergeConfig> ParseConfig(const YAML::Node& root,
                                        const std::string& source_dir) {
  if (!root.IsMap()) return Invalid("the document must be a mapping");
  static const std::set<std::string> kTop = {"merge_method", "base_model",
                                             "models",       "parameters",
                                             "dtype",        "out_dtype"};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (!kTop.count(key)) {
      std::string hint;
      if (key == "slices") hint = " (slices are not supported; use models)";
      if (key == "tokenizer_source" || key == "tokenizer") {
        hint = " (tokenizer files are copied from the base model)";
      }
      return Invalid(absl::StrCat("unknown key '", key, "'", hint));
    }
  }
  MergeConfig c;
  c.source_dir = source_dir;
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
                      ParseParams(root["parameters"], "global", false));
  const YAML::Node models = root["models"];
  if (!models || !models.IsSequence() || models.size() == 0) {
    return Invalid("models must be a non-empty list");
  }
  for (size_t i = 0; i < models.size(); ++i) {
    const YAML::Node m = models[i];
    ModelEntry e;
    if (m.IsScalar()) {
      e.model = m.as<std::string>();
    } else if (m.IsMap()) {
      for (const auto& kv : m) {
        const std::string key = kv.first.as<std::string>();
        if (key != "model" && key != "parameters") {
          return Invalid(
              absl::StrCat("unknown key '", key, "' in models[", i, "]"));
        }
      }
      if (!m["model"] || !m["model"].IsScalar()) {
        return Invalid(
            absl::StrCat("models[", i, "] needs 'model: NAME_OR_PATH'"));
      }
      e.model = m["model"].as<std::string>();
      MS_ASSIGN_OR_RETURN(
          e.parameters,
          ParseParams(m["parameters"], absl::StrCat("model '", e.model, "'"),
                      true));
    } else {
      return Invalid(absl::StrCat("models[", i, "] must be a mapping"));
    }
    c.models.push_back(std::move(e));
  }
  return c;
}

}  // namespace

bool IsKnownParameter(const std::string& key) {
  return KnownParameters().count(key) > 0;
}

bool IsPerModelOnlyParameter(const std::string& key) {
  return key == "fisher" || key == "gram";
}

absl::StatusOr<MergeConfig> MergeConfig::FromYaml(
    const std::string& text, const std::string& source_dir) {
  try {
    auto c = ParseConfig(YAML::Load(text), source_dir);
    if (c.ok()) c->source_text = text;
    return c;
  } catch (const YAML::Exception& e) {
    return Invalid(e.what());
  }
}

absl::StatusOr<MergeConfig> MergeConfig::FromYamlFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read config ", path));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto parent = std::filesystem::path(path).parent_path();
  return FromYaml(ss.str(), parent.empty() ? "." : parent.string());
}

}  // namespace mergeserve
