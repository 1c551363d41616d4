#include "cli/merge_command.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/progress_bar.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

constexpr char kMergeUsage[] =
    R"(usage: mergeserve merge CONFIG.yaml OUTPUT_DIR [options]

Merges the checkpoints a mergekit-style YAML config names into OUTPUT_DIR
(a Hugging Face folder: safetensors shards, index, config and tokenizer files
copied from the base). Model paths in the config are folders; relative paths
resolve against the config file's folder. Nothing appears under OUTPUT_DIR
unless the merge succeeds.

options:
  --threads N           worker threads (default: all cores)
  --memory-budget SIZE  refuse merges whose whole-tensor paths would need more
                        (e.g. 4GiB; default: unlimited)
  --shard-size SIZE     largest output shard (default 5GB)
  --backend NAME        fused (streaming CPU kernels, default) or aten
                        (whole-tensor ATen ops; runs on --device)
  --device DEV          ATen device for --backend aten: cpu, cuda, cuda:N
  --overwrite           replace a non-empty OUTPUT_DIR
  --json                print the summary as JSON on stdout
  --quiet               no progress output
  -h, --help            this help

exit codes: 0 ok, 2 bad config or arguments, 3 missing file or tensor,
4 corrupt input, 5 output exists, 6 over the memory budget, 1 other.
)";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
  bool help = false;
};

// --flag=value, --flag value, and boolean --flag.
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& in,
                               const std::map<std::string, bool>& known) {
  Args a;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string& s = in[i];
    if (s == "-h" || s == "--help") {
      a.help = true;
      continue;
    }
    if (s.rfind("--", 0) != 0 || s.size() == 2) {
      a.positional.push_back(s);
      continue;
    }
    std::string name = s.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = known.find(name);
    if (it == known.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", name));
    }
    const bool takes_value = it->second;
    if (takes_value && !inline_value) {
      if (i + 1 >= in.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("option --", name, " needs a value"));
      }
      value = in[++i];
    } else if (!takes_value) {
      if (inline_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("option --", name, " takes no value"));
      }
      if (!inline_value) value = "true";
    }
    a.flags[name] = value;
  }
  return a;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "mergeserve: error: %s\n",
               std::string(s.message()).c_str());
  return ExitCodeFor(static_cast<int>(s.code()));
}

}  // namespace

int ExitCodeFor(int code) {
  switch (static_cast<absl::StatusCode>(code)) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 2;
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied:
      return 3;
    case absl::StatusCode::kDataLoss:
      return 4;
    case absl::StatusCode::kAlreadyExists:
      return 5;
    case absl::StatusCode::kResourceExhausted:
      return 6;
    default:
      return 1;
  }
}

int RunMergeCommand(const std::vector<std::string>& argv) {
  auto parsed = ParseArgs(argv, {{"threads", true},
                                 {"memory-budget", true},
                                 {"shard-size", true},
                                 {"backend", true},
                                 {"device", true},
                                 {"overwrite", false},
                                 {"json", false},
                                 {"quiet", false}});
  if (!parsed.ok()) {
    std::fprintf(stderr, "mergeserve merge: %s\n\n%s",
                 std::string(parsed.status().message()).c_str(), kMergeUsage);
    return 2;
  }
  Args& a = *parsed;
  if (a.help) {
    std::fputs(kMergeUsage, stdout);
    return 0;
  }
  if (a.positional.size() != 2) {
    std::fprintf(stderr,
                 "mergeserve merge: expected CONFIG.yaml and OUTPUT_DIR\n\n%s",
                 kMergeUsage);
    return 2;
  }
  MergeOptions opts;
  opts.output_dir = a.positional[1];
  if (a.flags.count("threads")) {
    if (!absl::SimpleAtoi(a.flags["threads"], &opts.threads) ||
        opts.threads < 1) {
      return Fail(
          absl::InvalidArgumentError("--threads must be a positive integer"));
    }
  }
  if (a.flags.count("memory-budget")) {
    auto b = ParseByteSize(a.flags["memory-budget"]);
    if (!b.ok()) return Fail(b.status());
    opts.memory_budget = *b;
  }
  if (a.flags.count("shard-size")) {
    auto b = ParseByteSize(a.flags["shard-size"]);
    if (!b.ok()) return Fail(b.status());
    if (*b <= 0)
      return Fail(absl::InvalidArgumentError("--shard-size must be > 0"));
    opts.max_shard_bytes = static_cast<uint64_t>(*b);
  }
  if (a.flags.count("backend")) {
    const std::string& b = a.flags["backend"];
    if (b == "fused") {
      opts.backend = Backend::kFused;
    } else if (b == "aten") {
      opts.backend = Backend::kAten;
    } else {
      return Fail(
          absl::InvalidArgumentError("--backend must be fused or aten"));
    }
  }
  if (a.flags.count("device")) opts.device = a.flags["device"];
  opts.overwrite = a.flags.count("overwrite") && a.flags["overwrite"] == "true";
  const bool json = a.flags.count("json") && a.flags["json"] == "true";
  const bool quiet = a.flags.count("quiet") && a.flags["quiet"] == "true";

  auto config = MergeConfig::FromYamlFile(a.positional[0]);
  if (!config.ok()) return Fail(config.status());

  ProgressBar bar(stderr, absl::StrCat("merging (", config->merge_method, ")"));
  if (!quiet) {
    opts.on_progress = [&](const MergeProgress& p) {
      if (p.phase == "merge") {
        bar.Update(p.tensors_done, p.tensors_total, p.tensor);
      }
    };
  }
  auto summary = RunMerge(*config, opts);
  bar.Finish();
  if (!summary.ok()) return Fail(summary.status());
  const MergeSummary& s = *summary;
  if (json) {
    nlohmann::json j = {
        {"method", s.method},         {"output_dir", s.output_dir},
        {"tensors", s.tensors},       {"merged", s.merged},
        {"copied", s.copied},         {"shards", s.shards},
        {"bytes_read", s.bytes_read}, {"bytes_written", s.bytes_written},
        {"seconds", s.seconds},       {"peak_rss_bytes", s.peak_rss_bytes}};
    std::cout << j.dump() << std::endl;
  } else {
    std::printf(
        "merged %s: %lld tensors (%lld merged, %lld copied) -> %s (%d "
        "shard%s); read %s, wrote %s in %.2f s (%s/s read); peak RSS %s\n",
        s.method.c_str(), static_cast<long long>(s.tensors),
        static_cast<long long>(s.merged), static_cast<long long>(s.copied),
        s.output_dir.c_str(), s.shards, s.shards == 1 ? "" : "s",
        FormatBytes(static_cast<int64_t>(s.bytes_read)).c_str(),
        FormatBytes(static_cast<int64_t>(s.bytes_written)).c_str(), s.seconds,
        FormatBytes(
            static_cast<int64_t>(s.seconds > 0 ? s.bytes_read / s.seconds : 0))
            .c_str(),
        FormatBytes(s.peak_rss_bytes).c_str());
  }
  return 0;
}

int RunMethodsCommand(const std::vector<std::string>& args) {
  for (const MethodInfo& m : AllMethods()) {
    std::printf("%-18s %s\n", m.name, m.summary);
  }
  return 0;
}

}  // namespace mergeserve
