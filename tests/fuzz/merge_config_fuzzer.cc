// libFuzzer target: the merge config parser (YAML, the mergekit vocabulary,
// the cost bounds) on arbitrary text. It must return OK or INVALID_ARGUMENT
// and never crash or run away; what it accepts must survive its canonical
// form: parse(ToYaml(c)) is accepted and prints the same.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mergeserve/engine/merge_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = mergeserve::MergeConfig::FromYaml(text, ".");
  if (!config.ok()) {
    if (config.status().code() != absl::StatusCode::kInvalidArgument) {
      std::abort();
    }
    return 0;
  }
  const std::string canonical = config->ToYaml();
  auto again = mergeserve::MergeConfig::FromYaml(canonical, ".");
  if (!again.ok() || again->ToYaml() != canonical) std::abort();
  return 0;
}
