// `model+lora` references (mergekit's ModelReference): a PEFT LoRA adapter
// folder merged into a model the way PEFT's merge_and_unload() does it,
// written once into a private safetensors folder that the merge then reads
// as a model of its own.
#ifndef MERGESERVE_ENGINE_LORA_ADAPTER_H_
#define MERGESERVE_ENGINE_LORA_ADAPTER_H_

#include <string>

#include "absl/status/status.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {

// Writes `model` with the adapter in `adapter_dir` (adapter_config.json,
// adapter_model.safetensors; files vetted by `check`) merged in, to
// `out_dir`. Errors name the adapter: not a LoRA, DoRA, a key for a tensor
// the model lacks, unsupported layer restrictions.
absl::Status MergeLoraAdapter(const ModelFolder& model,
                              const std::string& adapter_dir,
                              const FileCheck& check,
                              const std::string& out_dir);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_LORA_ADAPTER_H_
