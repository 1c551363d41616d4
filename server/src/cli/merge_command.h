// `mergeserve merge CONFIG.yaml OUTPUT_DIR`: a one-shot merge in-process.
#ifndef MERGESERVE_CLI_MERGE_COMMAND_H_
#define MERGESERVE_CLI_MERGE_COMMAND_H_

#include <string>
#include <vector>

namespace mergeserve {

// Returns the process exit code.
int RunMergeCommand(const std::vector<std::string>& args);
int RunMethodsCommand(const std::vector<std::string>& args);
// mergekit-yaml's command line over RunMergeCommand.
int RunMergekitYamlCommand(const std::vector<std::string>& args);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_MERGE_COMMAND_H_
