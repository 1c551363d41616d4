#include "cli/analyze_command.h"

#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/merge_command.h"
#include "mergeserve/base/exit_codes.h"
#include "mergeserve/ui/diagnostics_chart.h"

namespace mergeserve {
namespace {

constexpr char kUsage[] =
    R"(usage: mergeserve analyze CONFIG.yaml [--json] [--plot FILE] [--threads N]

Runs the merge a config describes without writing it and reports, per tensor
and overall: the fraction of each expert's entries the trim keeps, the
sign-conflict rate among entries kept by two or more experts, the norms of
the task vectors and of the merged one, and the pairwise cosines of the task
vectors (the TIES paper's diagnostics). For every matrix (2-D tensor) it also
reports how much the tasks' top singular subspaces overlap: for the top
k = r/N left singular vectors U_i of each task vector, ||U_i^T U_j||^2 / k
(1: the same subspace; about k/rows for unrelated ones), the quantity the
TSV and Iso papers use to explain interference; then per layer. --plot saves
a chart of the conflict rate per tensor, the cosine matrix and the overlap
per layer, as PNG for FILE.png and SVG otherwise (--svg FILE is the same).
Covers the task-vector methods.
)";

}  // namespace

ChartData ToChart(const MergeDiagnostics& d) {
  ChartData c;
  c.method = d.method;
  c.experts = d.experts;
  for (const auto& t : d.tensors) {
    c.tensors.push_back(t.name);
    c.conflict_rate.push_back(t.conflict_rate);
  }
  c.overall_conflict_rate = d.overall.conflict_rate;
  c.cosine = d.overall.cosine;
  c.subspace_overlap = d.overall.subspace_overlap;
  for (const auto& l : d.layers) {
    c.layers.push_back(LayerLabel(l.layer));
    c.layer_conflict_rate.push_back(l.conflict_rate);
    c.layer_overlap.push_back(l.subspace_overlap);
    c.layer_matrices.push_back(l.matrices);
  }
  return c;
}

int RunAnalyzeCommand(const std::vector<std::string>& args) {
  std::string config_path, svg;
  bool json = false;
  MergeOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if ((a == "--svg" || a == "--plot" || a == "--threads") &&
               i + 1 < args.size()) {
      if (a == "--svg" || a == "--plot") {
        svg = args[++i];
      } else if (!absl::SimpleAtoi(args[++i], &options.threads) ||
                 options.threads < 1) {
        std::fprintf(
            stderr,
            "mergeserve analyze: --threads must be a positive integer\n");
        return 2;
      }
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "mergeserve analyze: unknown option %s\n\n%s",
                   a.c_str(), kUsage);
      return 2;
    } else if (config_path.empty()) {
      config_path = a;
    } else {
      std::fprintf(stderr, "mergeserve analyze: expected one CONFIG.yaml\n\n%s",
                   kUsage);
      return 2;
    }
  }
  if (config_path.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto config = MergeConfig::FromYamlFile(config_path);
  absl::StatusOr<MergeDiagnostics> d =
      config.ok() ? AnalyzeMerge(*config, options)
                  : absl::StatusOr<MergeDiagnostics>(config.status());
  if (!d.ok()) {
    std::fprintf(stderr, "mergeserve: error: %s\n",
                 std::string(d.status().message()).c_str());
    return ExitCodeFor(static_cast<int>(d.status().code()));
  }
  if (!svg.empty()) {
    std::ofstream out(svg, std::ios::binary);
    out << RenderDiagnosticsChart(ToChart(*d), svg);
    if (!out) {
      std::fprintf(stderr, "mergeserve: error: cannot write %s\n", svg.c_str());
      return 1;
    }
  }
  if (json) {
    std::cout << DiagnosticsToJson(*d) << std::endl;
    return 0;
  }
  const ChartData chart = ToChart(*d);
  std::printf("%s over %zu experts:", d->method.c_str(), d->experts.size());
  for (const auto& e : d->experts) std::printf(" %s", e.c_str());
  std::printf("\n\n%-48s %-24s %9s %10s\n", "tensor", "kept % per expert",
              "conflict%", "|tau_m|");
  auto row = [](const TensorDiagnostics& t) {
    std::string kept;
    for (double k : t.kept_fraction)
      absl::StrAppendFormat(&kept, "%5.1f ", 100 * k);
    std::printf("%-48s %-24s %9.2f %10.4g\n", t.name.c_str(), kept.c_str(),
                100 * t.conflict_rate, t.merged_norm);
  };
  for (const auto& t : d->tensors) row(t);
  row(d->overall);
  std::printf("\n|tau| per expert (all merged tensors):");
  for (double v : d->overall.tau_norm) std::printf(" %.4g", v);
  std::printf("\npairwise cosine of task vectors:\n");
  for (size_t i = 0; i < d->experts.size(); ++i) {
    std::printf("  %-16s", d->experts[i].c_str());
    for (double c : d->overall.cosine[i]) std::printf(" %7.3f", c);
    std::printf("\n");
  }
  std::fputs(LayerTableText(chart).c_str(), stdout);
  if (!svg.empty()) std::printf("\nchart written to %s\n", svg.c_str());
  return 0;
}

}  // namespace mergeserve
