// `mergeserve eval`: a checkpoint's program on a dataset, optionally with
// another checkpoint's weights (a merge) loaded into it by name.
#ifndef MERGESERVE_CLI_EVAL_COMMAND_H_
#define MERGESERVE_CLI_EVAL_COMMAND_H_

#include <string>
#include <vector>

namespace mergeserve {

int RunEvalCommand(const std::vector<std::string>& args);
// `mergeserve fisher` and `mergeserve gram` (statistics_command.cc).
int RunFisherCommand(const std::vector<std::string>& args);
int RunGramCommand(const std::vector<std::string>& args);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_EVAL_COMMAND_H_
