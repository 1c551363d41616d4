// The modules of a model, as mergekit's `modules:` names them: a
// vision-language model's text decoder, vision tower and projector, an
// encoder-decoder's encoder and decoder. mergekit defines them per
// architecture (its modular architecture files: gemma3 and mistral3 and
// llama4 vision models, Qwen2/2.5/3-VL, T5, Whisper); any other model has
// one module, "default", or, with several layer stacks (LLaVA), one per
// stack named by the text before its layer index
// ("language_model.model.layers") plus "default" for the tensors outside
// layers (mergekit's infer_architecture_info).
#ifndef MERGESERVE_ENGINE_MODEL_MODULES_H_
#define MERGESERVE_ENGINE_MODEL_MODULES_H_

#include <map>
#include <string>
#include <vector>

#include "mergeserve/format/model_folder.h"

namespace mergeserve {

class ModelModules {
 public:
  // From the model's config.json (model_type) and tensor names.
  static ModelModules Of(const ModelFolder& model);

  // Module names, sorted.
  const std::vector<std::string>& names() const { return names_; }
  // The module a tensor belongs to; "" for none (a tensor no module of a
  // known architecture claims).
  std::string ModuleOf(const std::string& tensor) const;
  // "gemma3 (mergekit's modular architecture)" or "inferred from the layer
  // stacks": for messages.
  const std::string& source() const { return source_; }

 private:
  // Longest matching prefix wins; "" in `by_prefix` claims everything.
  std::map<std::string, std::string> by_prefix_;
  std::vector<std::string> names_;
  std::string source_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MODEL_MODULES_H_
