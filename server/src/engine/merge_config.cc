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
      "select_topk", "scale",
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

absl::StatusOr<MergeConfig> ParseConfig(const YAML::Node& root,
                                        const std::string& source_dir,
                                        Budget& budget) {
  if (!root.IsMap()) return Invalid("the document must be a mapping");
  static const std::set<std::string> kTop = {
      "name",   "merge_method", "base_model", "models",
      "slices", "parameters",   "dtype",      "out_dtype"};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (!kTop.count(key)) {
      std::string hint;
      if (key == "tokenizer_source" || key == "tokenizer") {
        hint = " (tokenizer files are copied from the base model)";
      }
      return Invalid(absl::StrCat("unknown key '", Abbreviate(key), "'", hint));
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
  if (root["slices"]) {
    if (root["models"]) return Invalid("give models or slices, not both");
    MS_ASSIGN_OR_RETURN(c.slices, ParseSlices(root["slices"], budget));
    return c;
  }
  const YAML::Node models = root["models"];
  if (!models || !models.IsSequence() || models.size() == 0) {
    return Invalid("models (or slices) must be a non-empty list");
  }
  if (models.size() > budget.limits.max_models) {
    return Invalid(absl::StrCat("models lists ", models.size(),
                                " entries; at most ", budget.limits.max_models,
                                " are allowed"));
  }
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
          return Invalid(absl::StrCat("unknown key '", Abbreviate(key),
                                      "' in models[", i, "]"));
        }
      }
      if (!m["model"] || !m["model"].IsScalar()) {
        return Invalid(
            absl::StrCat("models[", i, "] needs 'model: NAME_OR_PATH'"));
      }
      e.model = m["model"].as<std::string>();
      MS_ASSIGN_OR_RETURN(
          e.parameters,
          ParseParams(m["parameters"],
                      absl::StrCat("model '", Abbreviate(e.model), "'"), true,
                      budget));
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
        "; several merges in one file run with `mergeserve merge`, one "
        "request is one merge"));
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

}  // namespace

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
  if (!slices.empty()) {
    absl::StrAppend(&out, "slices:\n");
    for (const SliceSpec& slice : slices) {
      absl::StrAppend(&out, "  - sources:\n");
      for (const SliceSource& src : slice.sources) {
        absl::StrAppend(&out, "      - model: ", Scalar(src.model),
                        "\n        layer_range: [", src.layer_begin, ", ",
                        src.layer_end, "]\n");
        if (!src.parameters.empty()) {
          absl::StrAppend(&out, "        parameters:\n");
          AppendParams(src.parameters, "          ", &out);
        }
      }
      if (!slice.parameters.empty()) {
        absl::StrAppend(&out, "    parameters:\n");
        AppendParams(slice.parameters, "      ", &out);
      }
    }
    return out;
  }
  absl::StrAppend(&out, "models:\n");
  for (const ModelEntry& m : models) {
    absl::StrAppend(&out, "  - model: ", Scalar(m.model), "\n");
    if (!m.parameters.empty()) {
      absl::StrAppend(&out, "    parameters:\n");
      AppendParams(m.parameters, "      ", &out);
    }
  }
  return out;
}

}  // namespace mergeserve
