// The engine's entry points into the LibTorch module (see aten_module.h).
#ifndef MERGESERVE_ENGINE_ENGINE_ATEN_H_
#define MERGESERVE_ENGINE_ENGINE_ATEN_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_method.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {

class TaskVectorMerge;
struct TensorParams;

// The module's implementations of the engine's ATen work (defined in it
// only), which the table below holds.
namespace aten {
// The ATen method registered under `name` (method_registry.cc's names), or
// nullptr.
std::unique_ptr<MergeMethod> NewMethod(const std::string& name);
// lora_adapter.h's MergeLoraAdapter.
absl::Status MergeLoraAdapter(const ModelFolder& model,
                              const std::string& adapter_dir,
                              const FileCheck& check,
                              const std::string& out_dir);
// TaskVectorMerge's `backend: aten` path (task_vector_merge_aten.cc).
absl::Status MergeTaskVectors(const TaskVectorMerge& method,
                              const MergePlan& plan, const PlannedTensor& t,
                              const TensorParams& p, ExecContext& ctx,
                              TensorSink* out, float* keep_update);
// model_stock's `backend: aten` path (model_stock_aten.cc).
absl::Status MergeModelStock(const MergePlan& plan, const PlannedTensor& t,
                             const std::vector<int>& experts, bool filter_wise,
                             ExecContext& ctx, TensorSink& out);
// at::set_num_threads, where `threads` differs from the count last set.
void SetNumThreads(int threads);
}  // namespace aten

struct EngineAtenTable {
  decltype(&aten::NewMethod) new_method;
  decltype(&aten::MergeLoraAdapter) merge_lora_adapter;
  decltype(&aten::MergeTaskVectors) merge_task_vectors;
  decltype(&aten::MergeModelStock) merge_model_stock;
  decltype(&aten::SetNumThreads) set_num_threads;
};

// Loads the module if needed; `what` names the feature in the error.
absl::StatusOr<const EngineAtenTable*> EngineAten(const std::string& what);
// nullptr while the module is not loaded.
const EngineAtenTable* LoadedEngineAten();

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_ENGINE_ATEN_H_
