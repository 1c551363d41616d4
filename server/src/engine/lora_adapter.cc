// Folding a LoRA adapter runs on ATen, in the LibTorch module
// (lora_adapter_aten.cc), loaded on first use.
#include "mergeserve/engine/lora_adapter.h"

#include "engine/engine_aten.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

absl::Status MergeLoraAdapter(const ModelFolder& model,
                              const std::string& adapter_dir,
                              const FileCheck& check,
                              const std::string& out_dir) {
  MS_ASSIGN_OR_RETURN(const EngineAtenTable* aten,
                      EngineAten("folding a LoRA adapter"));
  return aten->merge_lora_adapter(model, adapter_dir, check, out_dir);
}

}  // namespace mergeserve
