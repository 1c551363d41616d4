// mergectl: the command-line client of the mergeserve gRPC API.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>

#include "cli.h"

namespace {

constexpr char kUsage[] =
    R"(usage: mergectl [--server HOST:PORT] [--json] VERB [args]

checkpoints:
  register NAME PATH [--role base|expert|auxiliary] [--base NAME] [--label K=V]...
           [--upload]    register a server-side folder (default role: expert);
                         with --upload, PATH is a local folder streamed to the
                         server (SHA-256 checked, resumable by re-running)
  list [--role ROLE] [--label K=V]...
  show NAME              one checkpoint with its tensors
  delete NAME
merges:
  merge CONFIG.yaml [--wait] [--output DIR]
                         submit a mergekit YAML whose models are registered
                         checkpoints; --wait follows it, --output also
                         downloads the result into DIR
  jobs                   list jobs
  watch JOB              follow a job's progress until it ends
  cancel JOB
  download JOB DIR       fetch a finished job's HF folder (resumable, verified)
  analyze CONFIG.yaml [--plot FILE.svg]
                         the TIES paper's diagnostics of a merge (kept
                         fractions, sign conflicts, norms, cosines), computed
                         by the server without storing the merge

--server defaults to $MERGESERVE_ADDR, else localhost:50051. --json prints
machine-readable output (one JSON document, or one per event for watch).
Progress bars are drawn on a terminal, plain lines otherwise.
Exit codes: 0 ok, 2 invalid argument, 3 not found, 4 data loss or a failed
checksum, 5 already exists, 6 permission denied, 7 failed precondition,
8 server unavailable, 9 queue full / over budget, 10 cancelled, 1 other.
)";

}  // namespace

int main(int argc, char** argv) {
  mergectl::Args args;
  const char* env = std::getenv("MERGESERVE_ADDR");
  args.server = env ? env : "localhost:50051";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto is = [&](const std::string& flag) {
      return a == flag || a.rfind(flag + "=", 0) == 0;
    };
    auto value = [&](const std::string& flag) -> std::string {
      if (a.size() > flag.size() && a[flag.size()] == '=')
        return a.substr(flag.size() + 1);
      if (i + 1 >= argc) {
        std::fprintf(stderr, "mergectl: %s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--json") {
      args.json = true;
    } else if (a == "--upload") {
      args.upload = true;
    } else if (a == "--wait") {
      args.wait = true;
    } else if (is("--server")) {
      args.server = value("--server");
    } else if (is("--role")) {
      args.role = value("--role");
    } else if (is("--base")) {
      args.base = value("--base");
    } else if (is("--plot")) {
      args.plot = value("--plot");
    } else if (is("--output")) {
      args.output = value("--output");
    } else if (is("--label")) {
      const std::string kv = value("--label");
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "mergectl: --label takes KEY=VALUE, got '%s'\n",
                     kv.c_str());
        return 2;
      }
      args.labels[kv.substr(0, eq)] = kv.substr(eq + 1);
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "mergectl: unknown option %s\n\n%s", a.c_str(),
                   kUsage);
      return 2;
    } else {
      args.positional.push_back(a);
    }
  }
  if (args.positional.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  grpc::ChannelArguments ch_args;
  ch_args.SetMaxReceiveMessageSize(4 << 20);
  auto channel = grpc::CreateCustomChannel(
      args.server, grpc::InsecureChannelCredentials(), ch_args);
  int rc = mergectl::RunRegistryVerb(args, channel);
  if (rc == -1) rc = mergectl::RunJobVerb(args, channel);
  if (rc == -1) rc = mergectl::RunAnalyzeVerb(args, channel);
  if (rc == -1) {
    std::fprintf(stderr, "mergectl: unknown verb '%s'\n\n%s",
                 args.positional[0].c_str(), kUsage);
    return 2;
  }
  return rc;
}
