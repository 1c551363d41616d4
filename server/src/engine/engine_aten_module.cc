// The LibTorch module's engine table (see aten_module.h).
#include <ATen/Parallel.h>

#include <map>
#include <mutex>

#include "absl/base/thread_annotations.h"
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

namespace {
// LibTorch's thread count as last set (0: never).
std::mutex threads_mu;
int threads_set ABSL_GUARDED_BY(threads_mu) = 0;
}  // namespace

// at::set_num_threads rebuilds LibTorch's worker pool even at the count it
// already has (PyTorch 1.13's PThreadPool::set_thread_count), and each new
// worker spins (about 30 ms of a core here) before it sleeps: every server
// job paid that. Only a new count is passed on.
void SetNumThreads(int threads) {
  std::lock_guard<std::mutex> lock(threads_mu);
  if (threads_set == threads) return;
  at::set_num_threads(threads);
  threads_set = threads;
}

}  // namespace aten

namespace {

const EngineAtenTable kTable = {aten::NewMethod, aten::MergeLoraAdapter,
                                aten::MergeTaskVectors, aten::MergeModelStock,
                                aten::SetNumThreads};

[[maybe_unused]] const bool kRegistered =
    (RegisterAtenTable("engine", &kTable), true);

}  // namespace
}  // namespace mergeserve
