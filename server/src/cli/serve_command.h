// `mergeserve serve`: the long-running gRPC server.
#ifndef MERGESERVE_CLI_SERVE_COMMAND_H_
#define MERGESERVE_CLI_SERVE_COMMAND_H_

namespace mergeserve {

// argv[0] is "serve"; returns the exit code.
int RunServeCommand(int argc, char** argv);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_SERVE_COMMAND_H_
