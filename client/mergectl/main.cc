// mergectl: the command-line client of the mergeserve gRPC API.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>

#include "cli.h"
#include "mergeserve/base/exit_codes.h"

namespace {

constexpr char kUsage[] =
    R"(usage: mergectl [--server HOST:PORT] [--token T] [--ca-cert F] [--json] VERB [args]

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
  delete-job JOB         forget a finished job and remove its result
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

administration (admin tokens):
  token create --role reader|writer|admin [--tenant T] [--expires 30d]
           [--description TEXT]
                         a new API token, printed alone on the last line
                         (shown once; the server keeps only its hash)
  token list [TENANT] | token revoke ID
  quota get [TENANT]     a tenant's limits and usage
  quota set [TENANT] [--max-jobs N] [--max-stored-bytes SIZE]
           [--max-upload-bytes SIZE] [--max-streams N]   (0: unlimited)
  publish NAME [--unpublish]
                         show a checkpoint (e.g. an organisation's base model)
                         to every tenant; only admins can delete it then

connection:
  --server HOST:PORT     default $MERGESERVE_ADDR, else localhost:50051
  --token T              bearer token (default $MERGESERVE_TOKEN)
  --ca-cert FILE         CA that signed the server's certificate: use TLS
                         (default $MERGESERVE_CA_CERT); --tls uses the
                         system's CAs instead
  --cert FILE --key FILE client certificate for mutual TLS
  --tenant T             act in tenant T (admins only)
--json prints machine-readable output (one JSON document, or one per event
for watch). Progress bars are drawn on a terminal, plain lines otherwise.
)";

}  // namespace

int main(int argc, char** argv) {
  mergectl::Args args;
  const char* env = std::getenv("MERGESERVE_ADDR");
  args.server = env ? env : "localhost:50051";
  if (const char* t = std::getenv("MERGESERVE_TOKEN")) args.token = t;
  if (const char* c = std::getenv("MERGESERVE_CA_CERT")) args.ca_cert = c;
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
      std::fputs(mergeserve::ExitCodeHelp(), stdout);
      return 0;
    } else if (a == "--json") {
      args.json = true;
    } else if (a == "--upload") {
      args.upload = true;
    } else if (a == "--wait") {
      args.wait = true;
    } else if (is("--server")) {
      args.server = value("--server");
    } else if (is("--token")) {
      args.token = value("--token");
    } else if (is("--ca-cert")) {
      args.ca_cert = value("--ca-cert");
    } else if (is("--cert")) {
      args.cert = value("--cert");
    } else if (is("--key")) {
      args.key = value("--key");
    } else if (a == "--tls") {
      args.tls = true;
    } else if (is("--tenant")) {
      args.tenant = value("--tenant");
    } else if (is("--expires")) {
      args.expires = value("--expires");
    } else if (is("--description")) {
      args.description = value("--description");
    } else if (a == "--unpublish") {
      args.unpublish = true;
    } else if (is("--max-jobs") || is("--max-stored-bytes") ||
               is("--max-upload-bytes") || is("--max-streams")) {
      const std::string flag = a.substr(0, a.find('='));
      args.quota[flag.substr(2)] = value(flag);
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
  if (!args.cert.empty() != !args.key.empty()) {
    std::fprintf(stderr, "mergectl: --cert and --key go together\n");
    return 2;
  }
  auto channel = mergectl::Connect(args);
  if (channel == nullptr) return 2;
  int rc = mergectl::RunAdminVerb(args, channel);
  if (rc == -1) rc = mergectl::RunRegistryVerb(args, channel);
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
