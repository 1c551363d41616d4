// The LibTorch module's eval table (see engine/aten_module.h).
#include "engine/aten_module.h"
#include "eval/eval_aten.h"

namespace mergeserve {
namespace {

const EvalAtenTable kTable = {aten::EstimateFisher, aten::LinearLayersOf,
                              aten::EstimateGrams, aten::CreateProgramEvaluator,
                              aten::CreateRiAdapter};

[[maybe_unused]] const bool kRegistered =
    (RegisterAtenTable("eval", &kTable), true);

}  // namespace
}  // namespace mergeserve
