// `mergeserve fisher`: the diagonal Fisher of a checkpoint's program on its
// task data, written as a checkpoint a merge can name as `fisher:`.
#include <cstdio>

#include "absl/strings/numbers.h"
#include "cli/eval_command.h"
#include "cli/merge_command.h"
#include "cli/progress_bar.h"
#include "mergeserve/eval/fisher_estimator.h"

namespace mergeserve {
namespace {

constexpr char kUsage[] =
    R"(usage: mergeserve fisher --program FILE.pt --data FILE.safetensors --out DIR
                         [--weights DIR] [--mode exact|sampled|empirical]
                         [--examples N] [--seed S] [--device cpu]

Computes the diagonal Fisher of every parameter of the program (with
--weights loaded by tensor name) from per-example gradients of log p(y|x):
exact = expectation over the model's predictive distribution (default, as
Matena & Raffel), sampled = one y ~ p(.|x), empirical = the true label.
Writes DIR/model.safetensors with the program's parameter names.
)";

}  // namespace

int RunFisherCommand(const std::vector<std::string>& args) {
  std::string program, data, out, weights;
  FisherOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= args.size()) {
      std::fprintf(stderr, "mergeserve fisher: %s needs a value\n\n%s",
                   a.c_str(), kUsage);
      return 2;
    }
    const std::string& v = args[++i];
    if (a == "--program") {
      program = v;
    } else if (a == "--data") {
      data = v;
    } else if (a == "--out") {
      out = v;
    } else if (a == "--weights") {
      weights = v;
    } else if (a == "--device") {
      options.device = v;
    } else if (a == "--mode") {
      auto m = FisherModeFromName(v);
      if (!m.ok()) {
        std::fprintf(stderr, "mergeserve fisher: %s\n",
                     std::string(m.status().message()).c_str());
        return 2;
      }
      options.mode = *m;
    } else if (a == "--examples" &&
               absl::SimpleAtoi(v, &options.max_examples) &&
               options.max_examples >= 0) {
    } else if (a == "--seed" && absl::SimpleAtoi(v, &options.seed)) {
    } else {
      std::fprintf(stderr, "mergeserve fisher: bad argument %s %s\n\n%s",
                   a.c_str(), v.c_str(), kUsage);
      return 2;
    }
  }
  if (program.empty() || data.empty() || out.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  ProgressBar bar(stderr, "fisher");
  options.progress = [&](int64_t done, int64_t total) {
    bar.Update(done, total, "");
  };
  auto n = EstimateFisher(program, weights, data, out, options);
  bar.Finish();
  if (!n.ok()) {
    std::fprintf(stderr, "mergeserve: error: %s\n",
                 std::string(n.status().message()).c_str());
    return ExitCodeFor(static_cast<int>(n.status().code()));
  }
  std::printf("Fisher of %s on %lld examples -> %s\n", program.c_str(),
              static_cast<long long>(*n), out.c_str());
  return 0;
}

}  // namespace mergeserve
