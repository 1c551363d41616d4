#include "engine/engine_aten.h"

#include "engine/aten_module.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

absl::StatusOr<const EngineAtenTable*> EngineAten(const std::string& what) {
  MS_ASSIGN_OR_RETURN(const void* table, AtenTable("engine", what));
  return static_cast<const EngineAtenTable*>(table);
}

const EngineAtenTable* LoadedEngineAten() {
  return static_cast<const EngineAtenTable*>(LoadedAtenTable("engine"));
}

}  // namespace mergeserve
