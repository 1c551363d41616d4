// The engine half of test_util.h (format-only tests link without it).
#include "test_util.h"

namespace mergeserve::testing {

absl::StatusOr<std::map<std::string, std::vector<float>>> Merge(
    const std::string& dir, const std::string& yaml, MergeOptions options) {
  auto config = MergeConfig::FromYaml(yaml, dir);
  if (!config.ok()) return config.status();
  options.output_dir = dir + "/out";
  options.overwrite = true;
  auto summary = RunMerge(*config, options);
  if (!summary.ok()) return summary.status();
  return ReadModel(options.output_dir);
}

}  // namespace mergeserve::testing
