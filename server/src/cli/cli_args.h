// Argument parsing shared by mergeserve's subcommands: --flag=value,
// --flag value and boolean --flag, each checked against the command's known
// flags; errors print and map to the shared exit codes.
#ifndef MERGESERVE_CLI_CLI_ARGS_H_
#define MERGESERVE_CLI_CLI_ARGS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

struct CliArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
  bool help = false;

  bool Has(const std::string& flag) const { return flags.count(flag) > 0; }
  bool Bool(const std::string& flag) const {
    auto it = flags.find(flag);
    return it != flags.end() && it->second == "true";
  }
  std::string Get(const std::string& flag,
                  const std::string& fallback = "") const {
    auto it = flags.find(flag);
    return it == flags.end() ? fallback : it->second;
  }
};

// `known` maps a flag name (without --) to whether it takes a value.
absl::StatusOr<CliArgs> ParseCliArgs(const std::vector<std::string>& in,
                                     const std::map<std::string, bool>& known);

// Prints "mergeserve: error: <message>" and returns the exit code.
int FailWith(const absl::Status& s);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_CLI_ARGS_H_
