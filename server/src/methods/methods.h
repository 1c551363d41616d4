// Factories of the built-in methods; method_registry.cc lists them by name.
#ifndef MERGESERVE_METHODS_METHODS_H_
#define MERGESERVE_METHODS_METHODS_H_

#include <memory>

#include "mergeserve/engine/merge_method.h"

namespace mergeserve {

std::unique_ptr<MergeMethod> NewLinearMethod();
std::unique_ptr<MergeMethod> NewTaskArithmeticMethod();
std::unique_ptr<MergeMethod> NewTiesMethod();
std::unique_ptr<MergeMethod> NewDareLinearMethod();
std::unique_ptr<MergeMethod> NewDareTiesMethod();
std::unique_ptr<MergeMethod> NewBreadcrumbsMethod();
std::unique_ptr<MergeMethod> NewBreadcrumbsTiesMethod();
std::unique_ptr<MergeMethod> NewDellaMethod();
std::unique_ptr<MergeMethod> NewDellaLinearMethod();
std::unique_ptr<MergeMethod> NewSlerpMethod();
std::unique_ptr<MergeMethod> NewModelStockMethod();
std::unique_ptr<MergeMethod> NewFisherMethod();
std::unique_ptr<MergeMethod> NewRegMeanMethod();
std::unique_ptr<MergeMethod> NewNuSlerpMethod();
std::unique_ptr<MergeMethod> NewMultiSlerpMethod();
std::unique_ptr<MergeMethod> NewKarcherMethod();
std::unique_ptr<MergeMethod> NewNearSwapMethod();
std::unique_ptr<MergeMethod> NewArceeFusionMethod();
std::unique_ptr<MergeMethod> NewSceMethod();
std::unique_ptr<MergeMethod> NewPassthroughMethod();
std::unique_ptr<MergeMethod> NewRamMethod();
std::unique_ptr<MergeMethod> NewRamPlusTlMethod();
std::unique_ptr<MergeMethod> NewTsvMethod();
std::unique_ptr<MergeMethod> NewIsoCMethod();
std::unique_ptr<MergeMethod> NewIsoCtsMethod();
std::unique_ptr<MergeMethod> NewConsensusTaMethod();
std::unique_ptr<MergeMethod> NewConsensusTiesMethod();

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_METHODS_H_
