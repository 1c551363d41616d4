// `mergeserve mergekit-yaml CONFIG OUT [mergekit's flags]`: mergekit's
// command line over `mergeserve merge`. Flags that change the result or its
// files are translated; those that have no meaning here are accepted and
// say so once.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/merge_command.h"

namespace mergeserve {
namespace {

constexpr char kUsage[] =
    R"(usage: mergeserve mergekit-yaml CONFIG.yaml OUT_PATH [mergekit flags]

Runs a mergekit configuration the way mergekit-yaml does (several merges in
one file included), through `mergeserve merge`.

  --out-shard-size N    largest output shard, mergekit style: 5B = 5*10^9
                        bytes, 500M, 100K, or a plain number (default 5B)
  --cuda                run on cuda:0 (the ATen backend)
  --num-threads N       worker threads
  --quiet               no progress output
Accepted without effect (each says why once): --no-cuda --copy-tokenizer
  --allow-crimes --lazy-unpickle --low-cpu-memory --trust-remote-code
  --clone-tensors --safe-serialization --write-model-card --verbose
  --multi-gpu --gpu-rich --read-to-gpu --random-seed N --transformers-cache D
  --lora-merge-cache D --device D
)";

// mergekit's parse_kmb: K, M and B are powers of ten.
bool ParseKmb(std::string s, int64_t* out) {
  s = absl::AsciiStrToUpper(s);
  int64_t scale = 1;
  if (!s.empty() && (s.back() == 'K' || s.back() == 'M' || s.back() == 'B')) {
    scale = s.back() == 'K' ? 1000 : s.back() == 'M' ? 1000000 : 1000000000;
    s.pop_back();
  }
  double v;
  if (!absl::SimpleAtod(s, &v) || v <= 0 || v * scale > 9e18) return false;
  *out = static_cast<int64_t>(v * static_cast<double>(scale));
  return true;
}

}  // namespace

int RunMergekitYamlCommand(const std::vector<std::string>& args) {
  static const std::map<std::string, std::string> kNoEffect = {
      {"--no-cuda", "the CPU is the default"},
      {"--copy-tokenizer", "the reference model's tokenizer files are copied"},
      {"--allow-crimes", "architectures are not compared"},
      {"--lazy-unpickle",
       "tensors are always read lazily (memory-mapped); "
       ".bin pickles by an allow-list reader"},
      {"--low-cpu-memory", "memory is bounded by streaming"},
      {"--trust-remote-code", "no model code is ever run"},
      {"--clone-tensors", "tensors are never shared"},
      {"--safe-serialization", "outputs are always safetensors"},
      {"--write-model-card", "no model card is written yet"},
      {"--verbose", "progress is shown unless --quiet"},
      {"-v", "progress is shown unless --quiet"},
      {"--multi-gpu", "one device per merge"},
      {"--gpu-rich", "one device per merge"},
      {"--read-to-gpu", "inputs are read where the backend runs"},
  };
  static const std::map<std::string, std::string> kNoEffectValue = {
      {"--random-seed", "merges are deterministic (DARE/DELLA take `seed`)"},
      {"--transformers-cache", "models are read from the paths given"},
      {"--lora-merge-cache", "LoRA merges go to a private folder"},
      {"--device", "use --cuda"},
  };
  std::vector<std::string> positional, flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    std::string v;
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--out-shard-size") {
      int64_t bytes;
      if (!value(&v) || !ParseKmb(v, &bytes)) {
        std::fprintf(stderr,
                     "mergeserve mergekit-yaml: --out-shard-size takes a size "
                     "like 5B, 500M or 1000000\n");
        return 2;
      }
      flags.push_back("--shard-size");
      flags.push_back(std::to_string(bytes));
    } else if (a == "--cuda") {
      flags.insert(flags.end(), {"--backend", "aten", "--device", "cuda:0"});
    } else if (a == "--num-threads") {
      if (!value(&v)) {
        std::fprintf(stderr,
                     "mergeserve mergekit-yaml: --num-threads needs N\n");
        return 2;
      }
      flags.insert(flags.end(), {"--threads", v});
    } else if (a == "--quiet") {
      flags.push_back("--quiet");
    } else if (kNoEffect.count(a) || (a.rfind("--no-", 0) == 0 &&
                                      kNoEffect.count("--" + a.substr(5)))) {
      const auto it = kNoEffect.count(a) ? kNoEffect.find(a)
                                         : kNoEffect.find("--" + a.substr(5));
      std::fprintf(stderr,
                   "mergeserve mergekit-yaml: %s has no effect here (%s)\n",
                   a.c_str(), it->second.c_str());
    } else if (kNoEffectValue.count(a)) {
      if (!value(&v)) {
        std::fprintf(stderr, "mergeserve mergekit-yaml: %s needs a value\n",
                     a.c_str());
        return 2;
      }
      std::fprintf(stderr,
                   "mergeserve mergekit-yaml: %s has no effect here (%s)\n",
                   a.c_str(), kNoEffectValue.at(a).c_str());
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "mergeserve mergekit-yaml: unknown flag '%s'\n\n%s",
                   a.c_str(), kUsage);
      return 2;
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    std::fprintf(
        stderr,
        "mergeserve mergekit-yaml: expected CONFIG.yaml and OUT_PATH\n\n%s",
        kUsage);
    return 2;
  }
  // mergekit writes into an existing folder.
  std::vector<std::string> merge = {positional[0], positional[1],
                                    "--overwrite"};
  merge.insert(merge.end(), flags.begin(), flags.end());
  return RunMergeCommand(merge);
}

}  // namespace mergeserve
