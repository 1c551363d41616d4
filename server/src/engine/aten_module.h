// The code that runs on LibTorch (the ATen methods, LoRA folding, the eval
// layer) is built into a module, libmergeserve_aten.so, that the binaries
// load on first use: loading LibTorch costs a process about 0.8 s, and a
// one-shot merge on the fused path never needs it. Each layer's entry
// points are a table of functions the module registers when it is loaded;
// the test binaries link the module's objects, which register at start-up.
#ifndef MERGESERVE_ENGINE_ATEN_MODULE_H_
#define MERGESERVE_ENGINE_ATEN_MODULE_H_

#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

// Called by the module's static initialisers, once per layer.
void RegisterAtenTable(const char* layer, const void* table);

// The layer's table, loading the module if it is not loaded yet.
// FAILED_PRECONDITION (naming `what` and the module's path) if it cannot be.
absl::StatusOr<const void*> AtenTable(const char* layer,
                                      const std::string& what);

// The layer's table if the module is loaded, else nullptr.
const void* LoadedAtenTable(const char* layer);

// Where the binaries look for the module: $MERGESERVE_ATEN_MODULE, else
// beside the executable, else ../lib/mergeserve/ from it.
std::string AtenModulePath();

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_ATEN_MODULE_H_
