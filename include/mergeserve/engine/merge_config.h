// A merge request in the mergekit YAML vocabulary (see README, "Config").
#ifndef MERGESERVE_ENGINE_MERGE_CONFIG_H_
#define MERGESERVE_ENGINE_MERGE_CONFIG_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/param_value.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {

struct ModelEntry {
  std::string model;  // a folder path (one-shot mode) or a registered name
  ParamMap parameters;
};

struct MergeConfig {
  std::string merge_method;
  std::optional<std::string> base_model;
  std::vector<ModelEntry> models;
  ParamMap parameters;  // global; a model's own parameters override these
  std::optional<DType> dtype;
  std::optional<DType> out_dtype;
  // Folder relative model paths resolve against (the config file's folder).
  std::string source_dir;
  // The YAML text it was parsed from (saved next to the merged model).
  std::string source_text;

  // Rejects unknown keys, naming them.
  static absl::StatusOr<MergeConfig> FromYaml(const std::string& text,
                                              const std::string& source_dir);
  static absl::StatusOr<MergeConfig> FromYamlFile(const std::string& path);
};

// Parameter keys the engine understands (mergekit's, then extensions).
bool IsKnownParameter(const std::string& key);
// Keys that are only meaningful per model (they name a checkpoint).
bool IsPerModelOnlyParameter(const std::string& key);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MERGE_CONFIG_H_
