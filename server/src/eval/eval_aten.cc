// The eval layer's public functions, forwarded to the LibTorch module, which
// is loaded on first use (engine/aten_module.h).
#include "eval/eval_aten.h"

#include "absl/strings/str_cat.h"
#include "engine/aten_module.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

absl::StatusOr<const EvalAtenTable*> EvalAten(const std::string& what) {
  MS_ASSIGN_OR_RETURN(const void* table, AtenTable("eval", what));
  return static_cast<const EvalAtenTable*>(table);
}

}  // namespace

absl::StatusOr<FisherMode> FisherModeFromName(const std::string& name) {
  if (name == "exact") return FisherMode::kExact;
  if (name == "sampled") return FisherMode::kSampled;
  if (name == "empirical") return FisherMode::kEmpirical;
  return absl::InvalidArgumentError(absl::StrCat(
      "fisher_mode must be exact, sampled or empirical, got '", name, "'"));
}

absl::StatusOr<int64_t> EstimateFisher(const std::string& program_path,
                                       const std::string& weights_dir,
                                       const std::string& dataset_path,
                                       const std::string& out_dir,
                                       const FisherOptions& options) {
  MS_ASSIGN_OR_RETURN(const EvalAtenTable* aten,
                      EvalAten("estimating a Fisher diagonal"));
  return aten->estimate_fisher(program_path, weights_dir, dataset_path, out_dir,
                               options);
}

absl::StatusOr<std::vector<std::string>> LinearLayersOf(
    const std::string& program_path) {
  MS_ASSIGN_OR_RETURN(const EvalAtenTable* aten,
                      EvalAten("reading a program's linear layers"));
  return aten->linear_layers_of(program_path);
}

absl::StatusOr<GramResult> EstimateGrams(const std::string& program_path,
                                         const std::string& weights_dir,
                                         const std::string& dataset_path,
                                         const std::string& out_dir,
                                         const GramOptions& options) {
  MS_ASSIGN_OR_RETURN(const EvalAtenTable* aten,
                      EvalAten("capturing Gram matrices"));
  return aten->estimate_grams(program_path, weights_dir, dataset_path, out_dir,
                              options);
}

absl::StatusOr<std::unique_ptr<ProgramEvaluator>> ProgramEvaluator::Create(
    const std::string& program_path, const std::string& device) {
  MS_ASSIGN_OR_RETURN(const EvalAtenTable* aten,
                      EvalAten("evaluating a program"));
  return aten->create_program_evaluator(program_path, device);
}
ProgramEvaluator::~ProgramEvaluator() = default;

absl::StatusOr<std::unique_ptr<RiAdapter>> RiAdapter::Create(
    const std::string& base_dir, const std::vector<RiExpert>& experts,
    const RiOptions& options) {
  MS_ASSIGN_OR_RETURN(const EvalAtenTable* aten, EvalAten("merge_method 'ri'"));
  return aten->create_ri_adapter(base_dir, experts, options);
}
RiAdapter::~RiAdapter() = default;

}  // namespace mergeserve
