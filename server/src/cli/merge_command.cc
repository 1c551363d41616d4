#include "cli/merge_command.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/cli_args.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/exit_codes.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/merge_stages.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/ui/progress_bar.h"
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
  --allow-non-finite    write NaN/inf values instead of failing (OUT_OF_RANGE,
                        naming the tensor)
  --json                print the summary as JSON on stdout
  --quiet               no progress output
  -h, --help            this help

)";

}  // namespace

int RunMergeCommand(const std::vector<std::string>& argv) {
  auto parsed = ParseCliArgs(argv, {{"threads", true},
                                    {"memory-budget", true},
                                    {"shard-size", true},
                                    {"backend", true},
                                    {"device", true},
                                    {"overwrite", false},
                                    {"json", false},
                                    {"quiet", false},
                                    {"allow-non-finite", false}});
  if (!parsed.ok()) {
    std::fprintf(stderr, "mergeserve merge: %s\n\n%s",
                 std::string(parsed.status().message()).c_str(), kMergeUsage);
    return 2;
  }
  CliArgs& a = *parsed;
  if (a.help) {
    std::fputs(kMergeUsage, stdout);
    std::fputs(ExitCodeHelp(), stdout);
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
      return FailWith(
          absl::InvalidArgumentError("--threads must be a positive integer"));
    }
  }
  if (a.flags.count("memory-budget")) {
    auto b = ParseByteSize(a.flags["memory-budget"]);
    if (!b.ok()) return FailWith(b.status());
    opts.memory_budget = *b;
  }
  if (a.flags.count("shard-size")) {
    auto b = ParseByteSize(a.flags["shard-size"]);
    if (!b.ok()) return FailWith(b.status());
    if (*b <= 0)
      return FailWith(absl::InvalidArgumentError("--shard-size must be > 0"));
    opts.max_shard_bytes = static_cast<uint64_t>(*b);
  }
  if (a.flags.count("backend")) {
    const std::string& b = a.flags["backend"];
    if (b == "fused") {
      opts.backend = Backend::kFused;
    } else if (b == "aten") {
      opts.backend = Backend::kAten;
    } else {
      return FailWith(
          absl::InvalidArgumentError("--backend must be fused or aten"));
    }
  }
  if (a.flags.count("device")) opts.device = a.flags["device"];
  opts.overwrite = a.Bool("overwrite");
  opts.reject_non_finite = !a.Bool("allow-non-finite");
  const bool json = a.flags.count("json") && a.flags["json"] == "true";
  const bool quiet = a.flags.count("quiet") && a.flags["quiet"] == "true";

  // A file may hold several merges (mergekit-multi): named stages, then
  // the final one.
  std::ifstream in(a.positional[0]);
  if (!in) {
    return FailWith(absl::NotFoundError(
        absl::StrCat("cannot read config ", a.positional[0])));
  }
  std::stringstream text;
  text << in.rdbuf();
  const auto parent = std::filesystem::path(a.positional[0]).parent_path();
  auto staged =
      ParseStagedMerge(text.str(), parent.empty() ? "." : parent.string());
  if (!staged.ok()) return FailWith(staged.status());
  const MergeConfig* config = &staged->final;

  ProgressBar bar(stderr, absl::StrCat("merging (", config->merge_method, ")"));
  if (!quiet) {
    opts.on_progress = [&](const MergeProgress& p) {
      if (p.phase == "merge" && p.stage.empty()) {
        bar.Update(p.tensors_done, p.tensors_total, p.tensor);
      }
    };
  }
  absl::StatusOr<MergeSummary> summary;
  if (staged->stages.empty()) {
    summary = RunMerge(*config, opts);
  } else {
    // Stages write next to the output (same filesystem), then go away.
    // Every merge is planned first, on sketches of the stages it reads.
    StageSetup setup;
    setup.resolver = LocalPathResolver(config->source_dir);
    setup.scratch_dir = std::filesystem::absolute(opts.output_dir).string() +
                        ".mergeserve-stages";
    auto checked = CheckStages(*staged, setup, opts.backend, opts.threads);
    if (checked.ok()) {
      summary = RunMergeStages(*staged, opts, setup, [&](const std::string& s) {
        if (!quiet) std::fprintf(stderr, "stage %s\n", s.c_str());
      });
    } else {
      summary = checked.status();
    }
  }
  bar.Finish();
  if (!summary.ok()) return FailWith(summary.status());
  const MergeSummary& s = *summary;
  for (const std::string& w : s.warnings) {
    std::fprintf(stderr, "warning: %s\n", w.c_str());
  }
  if (json) {
    nlohmann::json j = {{"method", s.method},
                        {"output_dir", s.output_dir},
                        {"tensors", s.tensors},
                        {"merged", s.merged},
                        {"copied", s.copied},
                        {"shards", s.shards},
                        {"bytes_read", s.bytes_read},
                        {"bytes_written", s.bytes_written},
                        {"seconds", s.seconds},
                        {"peak_rss_bytes", s.peak_rss_bytes},
                        {"memory_estimate_bytes", s.memory_estimate_bytes},
                        {"warnings", s.warnings}};
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
