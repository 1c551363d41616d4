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
           [--program FILE.pt] [--task TASK] [--upload]
                         register a server-side folder (default role: expert);
                         with --upload, PATH is a local folder streamed to the
                         server (SHA-256 checked). --program attaches the
                         expert's TorchScript program (a folder's program.pt
                         is attached without asking), --task names its task
datasets:
  dataset NAME FILE.safetensors --task TASK --role eval|validation|fisher|auxiliary
           [--upload]    register task data (`inputs`, `labels`); --upload
                         streams a local file
  datasets [--task TASK] [--role ROLE]
  delete-dataset NAME
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
  analyze CONFIG.yaml [--plot FILE.svg|FILE.png]
                         the TIES paper's diagnostics of a merge (kept
                         fractions, sign conflicts, norms, cosines), computed
                         by the server without storing the merge
evaluation:
  merge CONFIG.yaml --eval
                         merge, then evaluate the result on every expert's task
  eval TARGET [--task T]... [--examples N]
                         accuracy and cross-entropy of a job's result or a
                         checkpoint on its tasks' eval datasets
  sweep CONFIG.yaml [--lambda 0.2,0.4,...] [--density 0.2,0.5,...]
           [--param NAME=V1,V2,...]... [--task T]... [--examples N]
                         merge and evaluate every grid point on validation
                         data (eval data where a task has none); names the
                         best. --param sweeps any global number (alpha=...,
                         ridge=..., steps=...) or one model's weight
                         (weight@MODEL=...)

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
    } else if (a == "--eval") {
      args.eval = true;
    } else if (is("--program")) {
      args.program = value("--program");
    } else if (is("--task")) {
      args.tasks.push_back(value("--task"));
      args.task = args.tasks.back();
    } else if (is("--lambda")) {
      args.lambdas = value("--lambda");
    } else if (is("--param")) {
      args.params.push_back(value("--param"));
    } else if (is("--density")) {
      args.densities = value("--density");
    } else if (is("--examples")) {
      const std::string v = value("--examples");
      char* end = nullptr;
      args.examples = std::strtoll(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != 0 || args.examples < 0) {
        std::fprintf(stderr, "mergectl: --examples takes a count\n");
        return 2;
      }
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
  if (rc == -1) rc = mergectl::RunEvalVerb(args, channel);
  if (rc == -1) {
    std::fprintf(stderr, "mergectl: unknown verb '%s'\n\n%s",
                 args.positional[0].c_str(), kUsage);
    return 2;
  }
  return rc;
}
