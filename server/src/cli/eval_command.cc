#include "cli/eval_command.h"

#include <cstdio>
#include <iostream>

#include "absl/strings/numbers.h"
#include "cli/merge_command.h"
#include "mergeserve/base/exit_codes.h"
#include "mergeserve/eval/program_evaluator.h"
#include "mergeserve/ui/progress_bar.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

constexpr char kUsage[] =
    R"(usage: mergeserve eval --program FILE.pt --data FILE.safetensors
                       [--weights DIR]... [--batch-size 256] [--device cpu] [--json]

Runs a TorchScript program (inputs -> logits; parameter names equal to the
checkpoint's tensor names) on a dataset (`inputs`, `labels`) and prints
accuracy and mean cross-entropy. Each --weights folder (e.g. a merged
backbone) is loaded into the program by tensor name first, in order.
)";

}  // namespace

int RunEvalCommand(const std::vector<std::string>& args) {
  std::string program, data, device = "cpu";
  std::vector<std::string> weights;
  int64_t batch = 256;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto next = [&]() -> const std::string* {
      return i + 1 < args.size() ? &args[++i] : nullptr;
    };
    const std::string* v = nullptr;
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if ((a == "--program" || a == "--data" || a == "--weights" ||
                a == "--device" || a == "--batch-size") &&
               (v = next()) != nullptr) {
      if (a == "--program") program = *v;
      if (a == "--data") data = *v;
      if (a == "--weights") weights.push_back(*v);
      if (a == "--device") device = *v;
      if (a == "--batch-size" &&
          (!absl::SimpleAtoi(*v, &batch) || batch <= 0)) {
        std::fprintf(
            stderr,
            "mergeserve eval: --batch-size must be a positive integer\n");
        return 2;
      }
    } else {
      std::fprintf(stderr, "mergeserve eval: unexpected argument %s\n\n%s",
                   a.c_str(), kUsage);
      return 2;
    }
  }
  if (program.empty() || data.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "mergeserve: error: %s\n",
                 std::string(s.message()).c_str());
    return ExitCodeFor(static_cast<int>(s.code()));
  };
  auto evaluator = ProgramEvaluator::Create(program, device);
  if (!evaluator.ok()) return fail(evaluator.status());
  size_t replaced = 0;
  for (const std::string& w : weights) {
    auto folder = ModelFolder::Open(w);
    if (!folder.ok()) return fail(folder.status());
    auto names = (*evaluator)->LoadWeights(**folder);
    if (!names.ok()) return fail(names.status());
    replaced += names->size();
  }
  ProgressBar bar(stderr, "evaluating");
  auto result =
      (*evaluator)->Evaluate(data, batch, [&](int64_t done, int64_t total) {
        if (!json) bar.Update(done, total, "");
      });
  bar.Finish();
  if (!result.ok()) return fail(result.status());
  if (json) {
    std::cout << nlohmann::json(
                     {{"examples", result->examples},
                      {"accuracy", result->accuracy},
                      {"mean_cross_entropy", result->mean_cross_entropy},
                      {"weights_replaced", replaced}})
                     .dump()
              << std::endl;
  } else {
    std::printf(
        "%lld examples: accuracy %.4f, mean cross-entropy %.4f (%zu tensors "
        "loaded)\n",
        static_cast<long long>(result->examples), result->accuracy,
        result->mean_cross_entropy, replaced);
  }
  return 0;
}

}  // namespace mergeserve
