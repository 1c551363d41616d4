#include "cli/analyze_command.h"

#include <cstdio>
#include <fstream>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/merge_command.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

constexpr char kUsage[] =
    R"(usage: mergeserve analyze CONFIG.yaml [--json] [--svg FILE] [--threads N]

Runs the merge a config describes without writing it and reports, per tensor
and overall: the fraction of each expert's entries the trim keeps, the
sign-conflict rate among entries kept by two or more experts, the norms of
the task vectors and of the merged one, and the pairwise cosines of the task
vectors (the TIES paper's diagnostics). --svg saves a chart of the conflict
rate per tensor and the cosine matrix. Covers the task-vector methods.
)";

nlohmann::json ToJson(const TensorDiagnostics& t) {
  return {{"name", t.name},
          {"numel", t.numel},
          {"kept_fraction", t.kept_fraction},
          {"conflict_rate", t.conflict_rate},
          {"tau_norm", t.tau_norm},
          {"merged_norm", t.merged_norm},
          {"cosine", t.cosine}};
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out.push_back(c);
  }
  return out;
}

}  // namespace

std::string DiagnosticsSvg(const MergeDiagnostics& d) {
  const int row = 16, label_w = 330, bar_w = 360, top = 56;
  const int n = static_cast<int>(d.tensors.size());
  const int e = static_cast<int>(d.experts.size());
  const int cell = 36;
  const int width = label_w + bar_w + 80;
  const int height = top + (n + 1) * row + 60 + (e + 1) * cell + 40;
  std::string s = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s: "
      "sign conflicts among kept entries (overall %.1f%%)</text>\n"
      "<text x=\"10\" y=\"38\">experts: %s</text>\n",
      width, height, Escape(d.method), 100 * d.overall.conflict_rate,
      Escape([&] {
        std::string x;
        for (const auto& name : d.experts)
          absl::StrAppend(&x, x.empty() ? "" : ", ", name);
        return x;
      }()));
  for (int i = 0; i < n; ++i) {
    const auto& t = d.tensors[static_cast<size_t>(i)];
    const int y = top + i * row;
    const int w = static_cast<int>(bar_w * t.conflict_rate);
    absl::StrAppendFormat(
        &s,
        "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n"
        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
        "fill=\"#d9534f\"/>\n"
        "<text x=\"%d\" y=\"%d\">%.1f%%</text>\n",
        label_w - 6, y + 11, Escape(t.name), label_w, y + 2, w, row - 4,
        label_w + w + 4, y + 11, 100 * t.conflict_rate);
  }
  const int my = top + (n + 1) * row + 30;
  absl::StrAppendFormat(
      &s,
      "<text x=\"10\" y=\"%d\" font-size=\"13\" font-weight=\"bold\">"
      "pairwise cosine of task vectors (all merged tensors)</text>\n",
      my - 10);
  for (int i = 0; i < e; ++i) {
    absl::StrAppendFormat(
        &s, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
        label_w - 6, my + (i + 1) * cell - cell / 2 + 4,
        Escape(d.experts[static_cast<size_t>(i)]));
    for (int j = 0; j < e; ++j) {
      const double c =
          d.overall.cosine[static_cast<size_t>(i)][static_cast<size_t>(j)];
      // Blue for positive, red for negative cosines.
      const int shade =
          static_cast<int>(255 * (1 - std::min(1.0, std::abs(c))));
      const std::string fill =
          c >= 0 ? absl::StrFormat("rgb(%d,%d,255)", shade, shade)
                 : absl::StrFormat("rgb(255,%d,%d)", shade, shade);
      absl::StrAppendFormat(
          &s,
          "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
          "stroke=\"#999\"/>\n<text x=\"%d\" y=\"%d\" "
          "text-anchor=\"middle\">%.2f</text>\n",
          label_w + j * cell, my + i * cell, cell, cell, fill,
          label_w + j * cell + cell / 2, my + i * cell + cell / 2 + 4, c);
    }
  }
  s += "</svg>\n";
  return s;
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
    } else if ((a == "--svg" || a == "--threads") && i + 1 < args.size()) {
      if (a == "--svg") {
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
    std::ofstream out(svg);
    out << DiagnosticsSvg(*d);
    if (!out) {
      std::fprintf(stderr, "mergeserve: error: cannot write %s\n", svg.c_str());
      return 1;
    }
  }
  if (json) {
    nlohmann::json j = {{"method", d->method},
                        {"experts", d->experts},
                        {"overall", ToJson(d->overall)}};
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : d->tensors) j["tensors"].push_back(ToJson(t));
    std::cout << j.dump() << std::endl;
    return 0;
  }
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
  if (!svg.empty()) std::printf("\nchart written to %s\n", svg.c_str());
  return 0;
}

}  // namespace mergeserve
