#include "mergeserve/engine/model_modules.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "mergeserve/engine/merge_plan.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

struct Rule {
  const char* module;
  const char* prefix;
};

// mergekit's modular architectures (mergekit/_data/architectures/*.json,
// "kind": "modular"), as weight-name prefixes: each file lists its
// modules' weights under a weight_prefix or with full names that share
// these prefixes. Transformers' newer checkpoint layout (model.language_
// model., model.vision_tower., lm_head.) is listed beside the older one.
using Architecture = std::pair<std::vector<std::string>, std::vector<Rule>>;

// Gemma 3, Mistral 3 and Llama 4 vision models: a language model, a vision
// model and a projector, each under its own prefix.
std::vector<Rule> LanguageVisionProjector(const char* vision,
                                          const char* prefix,
                                          const char* new_prefix) {
  return {{"text_decoder", "language_model."},
          {"text_decoder", "model.language_model."},
          {"text_decoder", "lm_head."},
          {"multi_modal_projector", "multi_modal_projector."},
          {"multi_modal_projector", "model.multi_modal_projector."},
          {vision, prefix},
          {vision, new_prefix}};
}

const std::vector<Architecture>& Architectures() {
  static const auto* kArchs = new std::vector<Architecture>{
      {{"gemma3", "mistral3"},
       LanguageVisionProjector("vision_tower", "vision_tower.",
                               "model.vision_tower.")},
      {{"llama4"},
       LanguageVisionProjector("vision_model", "vision_model.",
                               "model.vision_model.")},
      {{"qwen2_vl", "qwen2_5_vl"},
       {{"text_decoder", "model."},
        {"text_decoder", "lm_head."},
        {"multi_modal_projector", "visual.merger."},
        {"multi_modal_projector", "model.visual.merger."},
        {"vision_tower", "visual."},
        {"vision_tower", "model.visual."}}},
      {{"qwen3_vl", "qwen3_vl_moe"},
       {{"text_decoder", "model.language_model."},
        {"text_decoder", "lm_head."},
        {"multi_modal_projector", "model.visual.merger."},
        {"multi_modal_projector", "model.visual.deepstack_merger_list."},
        {"vision_tower", "model.visual."}}},
      {{"t5"},
       {{"encoder", "encoder."},
        {"decoder", "decoder."},
        {"decoder", "lm_head."},
        {"shared", "shared."}}},
      {{"whisper"},
       {{"encoder", "model.encoder."},
        {"decoder", "model.decoder."},
        {"decoder", "proj_out."}}},
  };
  return *kArchs;
}

std::string ModelType(const ModelFolder& model) {
  auto text = model.ReadSideFile("config.json");
  if (!text.ok()) return "";
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("model_type") ||
      !j["model_type"].is_string()) {
    return "";
  }
  return j["model_type"].get<std::string>();
}

}  // namespace

ModelModules ModelModules::Of(const ModelFolder& model) {
  ModelModules m;
  const std::string type = ModelType(model);
  for (const auto& [types, rules] : Architectures()) {
    if (std::find(types.begin(), types.end(), type) == types.end()) continue;
    std::set<std::string> names;
    for (const Rule& r : rules) {
      m.by_prefix_[r.prefix] = r.module;
      names.insert(r.module);
    }
    m.names_.assign(names.begin(), names.end());
    m.source_ = absl::StrCat(type, " (mergekit's modular architecture)");
    return m;
  }
  // Inferred: one module per layer stack, named by the text before the
  // layer index; with one stack (or none), everything is "default".
  std::set<std::string> stacks;
  for (const TensorInfo* info : model.tensors()) {
    const std::string stack = LayerStackOf(info->name);
    if (stack.empty() && LayerIndexOf(info->name) < 0) continue;
    // "a.layers." -> "a.layers" (the stack's key without its dot).
    const size_t key_end = info->name.find('.', stack.size());
    stacks.insert(info->name.substr(0, key_end));
  }
  m.source_ = "inferred from the layer stacks";
  m.by_prefix_[""] = "default";
  std::set<std::string> names = {"default"};
  if (stacks.size() > 1) {
    for (const std::string& s : stacks) {
      m.by_prefix_[s + "."] = s;
      names.insert(s);
    }
  }
  m.names_.assign(names.begin(), names.end());
  return m;
}

std::string ModelModules::ModuleOf(const std::string& tensor) const {
  // Longest prefix first: the map's order puts a prefix before its
  // extensions, so the last match walking forward is the longest.
  std::string found;
  size_t best = 0;
  bool any = false;
  for (const auto& [prefix, module] : by_prefix_) {
    if (tensor.compare(0, prefix.size(), prefix) == 0 &&
        (!any || prefix.size() >= best)) {
      found = module;
      best = prefix.size();
      any = true;
    }
  }
  return found;
}

}  // namespace mergeserve
