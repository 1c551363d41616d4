// `mergeserve fisher` and `mergeserve gram`: the statistics the data-aware
// methods need, computed by running a checkpoint's program on its task data
// and written as checkpoints a merge can name as `fisher:` / `gram:`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include "absl/strings/numbers.h"
#include "cli/eval_command.h"
#include "cli/merge_command.h"
#include "mergeserve/base/exit_codes.h"
#include "mergeserve/eval/fisher_estimator.h"
#include "mergeserve/eval/gram_estimator.h"
#include "mergeserve/ui/progress_bar.h"

namespace mergeserve {
namespace {

constexpr char kFisherUsage[] =
    R"(usage: mergeserve fisher --program FILE.pt --data FILE.safetensors --out DIR
                         [--weights DIR] [--mode exact|sampled|empirical]
                         [--examples N] [--seed S] [--device cpu]

Computes the diagonal Fisher of every parameter of the program (with
--weights loaded by tensor name) from per-example gradients of log p(y|x):
exact = expectation over the model's predictive distribution (default, as
Matena & Raffel), sampled = one y ~ p(.|x), empirical = the true label.
Writes DIR/model.safetensors with the program's parameter names.
)";

constexpr char kGramUsage[] =
    R"(usage: mergeserve gram --program FILE.pt --data FILE.safetensors --out DIR
                       [--weights DIR] [--examples N] [--batch-size B]
                       [--device cpu]

Computes RegMean's Gram matrices X^T X / n of the input of every linear
layer of the program (found by rewriting its TorchScript graph; no hooks
needed), on the dataset's `inputs`. Writes DIR/model.safetensors with one
[in, in] matrix per linear weight, named like the weight.
)";

struct Common {
  std::string program, data, out, weights, device = "cpu";
  std::map<std::string, std::string> extra;  // command-specific options
};

// Parses --flag value pairs; `extra` lists the command's own flags.
int Parse(const std::vector<std::string>& args, const char* cmd,
          const char* usage, const std::vector<std::string>& extra,
          Common* out) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "mergeserve %s: %s needs a value\n\n%s", cmd,
                   a.c_str(), usage);
      return 2;
    }
    const std::string& v = args[++i];
    if (a == "--program") {
      out->program = v;
    } else if (a == "--data") {
      out->data = v;
    } else if (a == "--out") {
      out->out = v;
    } else if (a == "--weights") {
      out->weights = v;
    } else if (a == "--device") {
      out->device = v;
    } else if (std::find(extra.begin(), extra.end(), a) != extra.end()) {
      out->extra[a] = v;
    } else {
      std::fprintf(stderr, "mergeserve %s: unknown option %s\n\n%s", cmd,
                   a.c_str(), usage);
      return 2;
    }
  }
  if (out->program.empty() || out->data.empty() || out->out.empty()) {
    std::fputs(usage, stderr);
    return 2;
  }
  return -1;  // go on
}

bool Count(const Common& c, const std::string& flag, int64_t* v) {
  auto it = c.extra.find(flag);
  if (it == c.extra.end()) return true;
  if (absl::SimpleAtoi(it->second, v) && *v >= 0) return true;
  std::fprintf(stderr, "mergeserve: %s takes a count, got %s\n", flag.c_str(),
               it->second.c_str());
  return false;
}

int Report(const absl::Status& status, const char* what, const Common& c,
           int64_t examples, double seconds) {
  if (!status.ok()) {
    std::fprintf(stderr, "mergeserve: error: %s\n",
                 std::string(status.message()).c_str());
    return ExitCodeFor(static_cast<int>(status.code()));
  }
  std::printf("%s of %s on %lld examples -> %s (%.3f s, %.0f examples/s)\n",
              what, c.program.c_str(), static_cast<long long>(examples),
              c.out.c_str(), seconds, seconds > 0 ? examples / seconds : 0.0);
  return 0;
}

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

}  // namespace

int RunFisherCommand(const std::vector<std::string>& args) {
  Common c;
  if (int rc = Parse(args, "fisher", kFisherUsage,
                     {"--mode", "--examples", "--seed"}, &c);
      rc >= 0) {
    return rc;
  }
  FisherOptions options;
  options.device = c.device;
  if (c.extra.count("--mode")) {
    auto m = FisherModeFromName(c.extra["--mode"]);
    if (!m.ok()) {
      std::fprintf(stderr, "mergeserve fisher: %s\n",
                   std::string(m.status().message()).c_str());
      return 2;
    }
    options.mode = *m;
  }
  int64_t seed = 0;
  if (!Count(c, "--examples", &options.max_examples) ||
      !Count(c, "--seed", &seed)) {
    return 2;
  }
  options.seed = static_cast<uint64_t>(seed);
  ProgressBar bar(stderr, "fisher");
  options.progress = [&](int64_t done, int64_t total) {
    bar.Update(done, total, "");
  };
  const auto start = std::chrono::steady_clock::now();
  auto n = EstimateFisher(c.program, c.weights, c.data, c.out, options);
  const double seconds = Since(start);
  bar.Finish();
  return Report(n.status(), "Fisher", c, n.ok() ? *n : 0, seconds);
}

int RunGramCommand(const std::vector<std::string>& args) {
  Common c;
  if (int rc =
          Parse(args, "gram", kGramUsage, {"--examples", "--batch-size"}, &c);
      rc >= 0) {
    return rc;
  }
  GramOptions options;
  options.device = c.device;
  if (!Count(c, "--examples", &options.max_examples) ||
      !Count(c, "--batch-size", &options.batch_size)) {
    return 2;
  }
  ProgressBar bar(stderr, "gram");
  options.progress = [&](int64_t done, int64_t total) {
    bar.Update(done, total, "");
  };
  const auto start = std::chrono::steady_clock::now();
  auto r = EstimateGrams(c.program, c.weights, c.data, c.out, options);
  const double seconds = Since(start);
  bar.Finish();
  if (r.ok()) {
    for (const std::string& l : r->layers) std::printf("  %s\n", l.c_str());
  }
  return Report(r.status(), "Grams", c, r.ok() ? r->examples : 0, seconds);
}

}  // namespace mergeserve
