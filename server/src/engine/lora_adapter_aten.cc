// MergeLoraAdapter on ATen, in the LibTorch module (engine_aten.h).
#include <ATen/ATen.h>
#include <re2/re2.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "engine/engine_aten.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

using Json = nlohmann::ordered_json;  // pattern keys in file order

constexpr char kPrefix[] = "base_model.model.";

struct ModuleLora {
  std::string a, b, bias;  // adapter tensor names
  bool embedding = false;
};

at::Tensor ToAten(const TensorView& v) {
  at::Tensor t = at::empty(
      std::vector<int64_t>(v.info->shape.begin(), v.info->shape.end()),
      at::kFloat);
  LoadAsF32(v.info->dtype, v.data, v.info->numel(), t.data_ptr<float>());
  return t;
}

// PEFT's get_pattern_key: the first key p (file order) with
// re.match(r"(.*\.)?(p)$", module).
std::optional<double> Pattern(const Json& patterns, const std::string& module) {
  if (!patterns.is_object()) return std::nullopt;
  for (auto it = patterns.begin(); it != patterns.end(); ++it) {
    RE2 re(absl::StrCat("(.*\\.)?(", it.key(), ")"));
    if (re.ok() && RE2::FullMatch(module, re) && it.value().is_number()) {
      return it.value().get<double>();
    }
  }
  return std::nullopt;
}

}  // namespace

namespace aten {
absl::Status MergeLoraAdapter(const ModelFolder& model,
                              const std::string& adapter_dir,
                              const FileCheck& check,
                              const std::string& out_dir) {
  auto adapter_error = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoRA adapter ", adapter_dir, ": ", why));
  };
  MS_ASSIGN_OR_RETURN(auto files, ModelFolder::Open(adapter_dir, check));
  MS_ASSIGN_OR_RETURN(std::string config_text,
                      files->ReadSideFile("adapter_config.json"));
  const Json cfg = Json::parse(config_text, nullptr, false);
  if (!cfg.is_object()) return adapter_error("adapter_config.json is not JSON");
  if (cfg.value("peft_type", "") != "LORA") {
    return adapter_error(absl::StrCat("peft_type '", cfg.value("peft_type", ""),
                                      "' is not LORA"));
  }
  if (cfg.value("use_dora", false)) {
    return adapter_error("DoRA (use_dora) adapters are not supported");
  }
  for (const char* key : {"layers_to_transform", "layers_pattern"}) {
    if (cfg.contains(key) && !cfg[key].is_null()) {
      return adapter_error(absl::StrCat("'", key, "' is not supported yet"));
    }
  }
  const double r0 = cfg.value("r", 8.0), alpha0 = cfg.value("lora_alpha", 8.0);
  const bool rslora = cfg.value("use_rslora", false);
  const bool fan_in_fan_out = cfg.value("fan_in_fan_out", false);
  // PEFT's check_target_module_exists.
  auto is_target = [&](const std::string& m) {
    auto listed = [&](const Json& list) {
      if (!list.is_array()) return false;
      for (const Json& e : list) {
        if (!e.is_string()) continue;
        const std::string s = e.get<std::string>();
        RE2 re(absl::StrCat("(^|.*\\.)", RE2::QuoteMeta(s), "($|\\..*)"));
        if (RE2::FullMatch(m, re)) return true;
      }
      return false;
    };
    if (listed(cfg.value("modules_to_save", Json::array()))) return false;
    const Json exclude = cfg.value("exclude_modules", Json());
    if (exclude.is_array()) {
      for (const Json& e : exclude) {
        if (e.is_string() && (m == e.get<std::string>() ||
                              absl::EndsWith(m, "." + e.get<std::string>()))) {
          return false;
        }
      }
    } else if (exclude.is_string()) {
      RE2 re(exclude.get<std::string>());
      if (re.ok() && RE2::FullMatch(m, re)) return false;
    }
    const Json targets = cfg.value("target_modules", Json());
    if (targets.is_string()) {
      RE2 re(targets.get<std::string>());
      return re.ok() && RE2::FullMatch(m, re);
    }
    if (!targets.is_array()) return false;
    for (const Json& e : targets) {
      if (!e.is_string()) continue;
      const std::string t = e.get<std::string>();
      if (m == t || absl::EndsWith(m, "." + t)) return true;
    }
    return false;
  };

  // Sort the adapter's tensors: LoRA pairs per module, whole tensors.
  std::map<std::string, ModuleLora> loras;   // module -> its tensors
  std::map<std::string, std::string> whole;  // model tensor -> adapter tensor
  for (const TensorInfo* t : files->tensors()) {
    if (!absl::StartsWith(t->name, kPrefix)) {
      return adapter_error(
          absl::StrCat("tensor '", t->name, "' does not start with ", kPrefix));
    }
    const std::string key = t->name.substr(sizeof(kPrefix) - 1);
    auto strip = [&](const char* suffix, std::string* module) {
      if (!absl::EndsWith(key, suffix)) return false;
      *module = key.substr(0, key.size() - std::strlen(suffix));
      return true;
    };
    std::string m;
    if (strip(".lora_A.weight", &m)) {
      loras[m].a = t->name;
    } else if (strip(".lora_B.weight", &m)) {
      loras[m].b = t->name;
    } else if (strip(".lora_embedding_A", &m)) {
      loras[m].a = t->name;
      loras[m].embedding = true;
    } else if (strip(".lora_embedding_B", &m)) {
      loras[m].b = t->name;
      loras[m].embedding = true;
    } else if (strip(".lora_B.bias", &m)) {
      loras[m].bias = t->name;
    } else {
      std::string target = key;
      if (strip(".base_layer.weight", &m)) target = m + ".weight";
      whole[target] = t->name;
    }
  }
  // What each model tensor gets.
  struct Delta {
    const ModuleLora* lora = nullptr;
    bool bias = false;
    double scale = 1;
  };
  std::map<std::string, Delta> deltas;
  for (const auto& [m, l] : loras) {
    if (!is_target(m)) {
      LogEvent("lora_pair_ignored", {{"adapter", adapter_dir},
                                     {"module", m},
                                     {"reason", "not a target module"}});
      continue;
    }
    if (l.a.empty() != l.b.empty()) {
      return adapter_error(
          absl::StrCat("module '", m, "' has only one of lora_A and lora_B"));
    }
    const double r = Pattern(cfg.value("rank_pattern", Json()), m).value_or(r0);
    const double alpha =
        Pattern(cfg.value("alpha_pattern", Json()), m).value_or(alpha0);
    const double s = rslora ? alpha / std::sqrt(r) : alpha / r;
    if (!l.a.empty()) deltas[m + ".weight"] = {&l, false, s};
    if (!l.bias.empty()) deltas[m + ".bias"] = {&l, true, s};
  }
  for (const auto& [name, d] : deltas) {
    if (model.Find(name) == nullptr) {
      return adapter_error(absl::StrCat("its LoRA targets '", name,
                                        "', which model ", model.path(),
                                        " does not have"));
    }
  }
  for (const auto& [name, src] : whole) {
    const TensorInfo* t = model.Find(name);
    const TensorInfo* a = files->Find(src);
    if (t == nullptr) {
      return adapter_error(absl::StrCat("its tensor '", src, "' replaces '",
                                        name, "', which model ", model.path(),
                                        " does not have"));
    }
    if (t->shape != a->shape) {
      return adapter_error(absl::StrCat(
          "its tensor '", src, "' has another shape than '", name, "'"));
    }
  }

  std::vector<TensorSpec> specs;
  for (const TensorInfo* t : model.tensors()) {
    specs.push_back({t->name, t->dtype, t->shape});
  }
  MS_ASSIGN_OR_RETURN(auto writer, SingleFileWriter(out_dir, specs));
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorInfo* t = model.tensors()[i];
    TensorView v = model.View(*t);
    auto replaced = whole.find(t->name);
    if (replaced != whole.end()) {
      // modules_to_save copies and base_layer weights, converted to the
      // model's dtype as PEFT's load_state_dict does.
      v = files->View(*files->Find(replaced->second));
    }
    auto d = deltas.find(t->name);
    if (d == deltas.end() && v.info->dtype == t->dtype) {
      MS_RETURN_IF_ERROR(writer->Write(i, 0, v.data, v.info->nbytes));
      continue;
    }
    at::Tensor w = ToAten(v);
    MS_RETURN_IF_ERROR(CatchAten("lora", [&]() -> absl::Status {
      if (d != deltas.end()) {
        const ModuleLora& l = *d->second.lora;
        at::Tensor delta;
        if (d->second.bias) {
          delta = ToAten(files->View(*files->Find(l.bias)));
        } else {
          const at::Tensor a = ToAten(files->View(*files->Find(l.a)));
          const at::Tensor b = ToAten(files->View(*files->Find(l.b)));
          delta = at::mm(b, a);
          if (l.embedding || fan_in_fan_out) delta = delta.t();
        }
        delta = (delta * d->second.scale).contiguous();
        if (delta.sizes() != w.sizes()) {
          return adapter_error(
              absl::StrCat("its update of '", t->name, "' has another shape"));
        }
        // The delta is cast to the weight's dtype and added in it (PEFT:
        // weight.data += delta.to(dtype)).
        if (t->dtype != DType::kF32) {
          std::vector<uint8_t> tmp(static_cast<size_t>(t->nbytes));
          StoreFromF32(delta.data_ptr<float>(), delta.numel(), t->dtype,
                       tmp.data());
          LoadAsF32(t->dtype, tmp.data(), delta.numel(),
                    delta.data_ptr<float>());
        }
        w = w + delta;
      }
      std::vector<uint8_t> out(static_cast<size_t>(t->nbytes));
      w = w.contiguous();
      StoreFromF32(w.data_ptr<float>(), w.numel(), t->dtype, out.data());
      return writer->Write(i, 0, out.data(), out.size());
    }));
  }
  // The model's side files come along (config.json, tokenizer).
  for (const std::string& name : ModelSideFiles()) {
    auto text = model.ReadSideFile(name);
    if (text.ok()) MS_RETURN_IF_ERROR(writer->AddFile(name, *text));
  }
  return writer->Commit();
}

}  // namespace aten
}  // namespace mergeserve
