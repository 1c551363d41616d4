// The engine half of test_util.h (format-only tests link without it).
#include <unistd.h>

#include <cstdlib>

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

const std::string& DigitsZoo() {
  // One zoo per process: CTest runs each test in its own process, in
  // parallel.
  static const std::string* zoo = [] {
    auto* dir =
        new std::string(TempDir("zoo_" + std::to_string(getpid())) + "/zoo");
    const std::string cmd = std::string("/usr/bin/python3 ") +
                            MERGESERVE_SOURCE_DIR +
                            "/tests/tools/make_zoo.py " + *dir + " > /dev/null";
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "failed: %s\n", cmd.c_str());
      std::abort();
    }
    return dir;
  }();
  return *zoo;
}

absl::StatusOr<std::pair<std::map<std::string, std::vector<float>>,
                         std::map<std::string, std::vector<float>>>>
MergeOnBothBackends(const std::string& dir, const std::string& yaml) {
  MergeOptions fused;
  fused.threads = 2;
  auto a = Merge(dir, yaml, fused);
  if (!a.ok()) return a.status();
  MergeOptions aten;
  aten.backend = Backend::kAten;
  auto b = Merge(dir, yaml, aten);
  if (!b.ok()) return b.status();
  return std::make_pair(*std::move(a), *std::move(b));
}

}  // namespace mergeserve::testing
