// The LibTorch module's engine table (see aten_module.h).
#include <ATen/Parallel.h>

#include <map>

#include "engine/aten_module.h"
#include "engine/engine_aten.h"
#include "methods/methods.h"

namespace mergeserve {
namespace aten {

// The methods whose .cc files run ATen math; the names are
// method_registry.cc's (its entries with no factory of their own).
std::unique_ptr<MergeMethod> NewMethod(const std::string& name) {
  using Factory = std::unique_ptr<MergeMethod> (*)();
  static const auto* kFactories = new std::map<std::string, Factory>{
      {"slerp", NewSlerpMethod},
      {"fisher", NewFisherMethod},
      {"regmean", NewRegMeanMethod},
      {"nuslerp", NewNuSlerpMethod},
      {"multislerp", NewMultiSlerpMethod},
      {"karcher", NewKarcherMethod},
      {"sce", NewSceMethod},
      {"nearswap", NewNearSwapMethod},
      {"arcee_fusion", NewArceeFusionMethod},
      {"ram", NewRamMethod},
      {"ramplus_tl", NewRamPlusTlMethod},
      {"tsv", NewTsvMethod},
      {"iso_c", NewIsoCMethod},
      {"iso_cts", NewIsoCtsMethod},
  };
  auto it = kFactories->find(name);
  return it == kFactories->end() ? nullptr : it->second();
}

void SetNumThreads(int threads) { at::set_num_threads(threads); }

}  // namespace aten

namespace {

const EngineAtenTable kTable = {aten::NewMethod, aten::MergeLoraAdapter,
                                aten::MergeTaskVectors, aten::MergeModelStock,
                                aten::SetNumThreads};

[[maybe_unused]] const bool kRegistered =
    (RegisterAtenTable("engine", &kTable), true);

}  // namespace
}  // namespace mergeserve
