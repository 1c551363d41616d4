// Shared pieces of mergectl's verbs: parsed arguments, exit codes, output.
#ifndef MERGESERVE_CLIENT_MERGECTL_CLI_H_
#define MERGESERVE_CLIENT_MERGECTL_CLI_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mergectl {

struct Args {
  std::string server;
  bool json = false;
  // Identity and transport (--token, --tls, --ca-cert, --cert, --key,
  // --tenant; $MERGESERVE_TOKEN, $MERGESERVE_CA_CERT).
  std::string token, ca_cert, cert, key, tenant;
  bool tls = false;
  // token / quota / publish verbs.
  std::string expires, description;
  std::map<std::string, std::string> quota;  // --max-jobs N ...
  bool unpublish = false;
  std::vector<std::string> positional;  // verb first
  std::string role, base, output;
  std::map<std::string, std::string> labels;
  bool wait = false;
  bool upload = false;
  std::string plot;                 // analyze --plot FILE.svg
  std::string program, task;        // register --program --task, dataset
  bool eval = false;                // merge --eval
  std::vector<std::string> tasks;   // eval/sweep --task (repeated)
  std::string lambdas, densities;   // sweep --lambda 0.2,0.4 --density ...
  std::vector<std::string> params;  // sweep --param NAME=v1,v2 (repeated)
  int64_t examples = 0;             // eval/sweep --examples N per task
};

// Exit codes that tell failure kinds apart: mergeserve's one table.
int ExitCode(const grpc::Status& s);
// The channel to the server: TLS when asked for (CA, client certificate),
// every call carrying the token and the acting tenant. Prints and returns
// nullptr when a certificate file cannot be read.
std::shared_ptr<grpc::Channel> Connect(const Args& args);
// Prints the error (naming the server when it is unreachable); returns the
// exit code.
int Fail(const grpc::Status& s, const std::string& server);
std::string HumanBytes(int64_t b);
// Reads the one CONFIG.yaml argument of `verb` (args.positional[1]) into
// *yaml; on failure prints why and returns the exit code, else 0.
int ReadConfigArg(const Args& args, const char* verb, std::string* yaml);
// Whether stderr is a terminal (progress bars) or not (plain lines).
bool Interactive();

int RunRegistryVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch);
int RunJobVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch);
int RunAnalyzeVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch);
// token, quota, publish (AdminService).
int RunAdminVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch);
// eval, sweep.
int RunEvalVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch);
// Evaluates a job's result (after waiting for it), printing progress and a
// per-task table; shared by `eval JOB` and `merge --eval`.
int EvaluateJob(const Args& args, const std::shared_ptr<grpc::Channel>& ch,
                const std::string& job_id);

}  // namespace mergectl

#endif  // MERGESERVE_CLIENT_MERGECTL_CLI_H_
