// `mergeserve token create|list|revoke --data-dir DIR`: administers the
// server's API tokens on its database directly (the server may be running;
// admins can do the same over AdminService with mergectl).
#ifndef MERGESERVE_CLI_TOKEN_COMMAND_H_
#define MERGESERVE_CLI_TOKEN_COMMAND_H_

#include <string>
#include <vector>

namespace mergeserve {

int RunTokenCommand(const std::vector<std::string>& args);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_TOKEN_COMMAND_H_
