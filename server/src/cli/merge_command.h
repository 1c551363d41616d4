// `mergeserve merge CONFIG.yaml OUTPUT_DIR`: a one-shot merge in-process.
#ifndef MERGESERVE_CLI_MERGE_COMMAND_H_
#define MERGESERVE_CLI_MERGE_COMMAND_H_

#include <string>
#include <vector>

namespace mergeserve {

// Returns the process exit code.
int RunMergeCommand(const std::vector<std::string>& args);
int RunMethodsCommand(const std::vector<std::string>& args);
// Exit code for a failed absl::Status code (see README, "Exit codes").
int ExitCodeFor(int status_code);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_MERGE_COMMAND_H_
