// The eval layer's entry points into the LibTorch module (see
// engine/aten_module.h): everything in eval/ runs TorchScript programs.
#ifndef MERGESERVE_EVAL_EVAL_ATEN_H_
#define MERGESERVE_EVAL_EVAL_ATEN_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/eval/fisher_estimator.h"
#include "mergeserve/eval/gram_estimator.h"
#include "mergeserve/eval/program_evaluator.h"
#include "mergeserve/eval/ri_adapter.h"

namespace mergeserve {

// The module's implementations (defined in it only), which the table below
// holds.
namespace aten {
absl::StatusOr<int64_t> EstimateFisher(const std::string& program_path,
                                       const std::string& weights_dir,
                                       const std::string& dataset_path,
                                       const std::string& out_dir,
                                       const FisherOptions& options);
absl::StatusOr<std::vector<std::string>> LinearLayersOf(
    const std::string& program_path);
absl::StatusOr<GramResult> EstimateGrams(const std::string& program_path,
                                         const std::string& weights_dir,
                                         const std::string& dataset_path,
                                         const std::string& out_dir,
                                         const GramOptions& options);
absl::StatusOr<std::unique_ptr<ProgramEvaluator>> CreateProgramEvaluator(
    const std::string& program_path, const std::string& device);
absl::StatusOr<std::unique_ptr<RiAdapter>> CreateRiAdapter(
    const std::string& base_dir, const std::vector<RiExpert>& experts,
    const RiOptions& options);
}  // namespace aten

struct EvalAtenTable {
  decltype(&aten::EstimateFisher) estimate_fisher;
  decltype(&aten::LinearLayersOf) linear_layers_of;
  decltype(&aten::EstimateGrams) estimate_grams;
  decltype(&aten::CreateProgramEvaluator) create_program_evaluator;
  decltype(&aten::CreateRiAdapter) create_ri_adapter;
};

}  // namespace mergeserve

#endif  // MERGESERVE_EVAL_EVAL_ATEN_H_
