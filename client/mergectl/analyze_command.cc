// mergectl analyze: the server's diagnostics of a merge, as a table, JSON,
// or an SVG or PNG chart (--plot FILE.svg / FILE.png).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli.h"
#include "mergeserve/ui/diagnostics_chart.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mergectl {
namespace {

nlohmann::json ToJson(const mergeserve::v1::TensorDiagnostics& t) {
  return {
      {"name", t.name()},
      {"numel", t.numel()},
      {"kept_fraction",
       std::vector<double>(t.kept_fraction().begin(), t.kept_fraction().end())},
      {"conflict_rate", t.conflict_rate()},
      {"tau_norm",
       std::vector<double>(t.tau_norm().begin(), t.tau_norm().end())},
      {"merged_norm", t.merged_norm()},
      {"cosine", std::vector<double>(t.cosine().begin(), t.cosine().end())},
      {"subspace_rank", t.subspace_rank()},
      {"subspace_overlap", std::vector<double>(t.subspace_overlap().begin(),
                                               t.subspace_overlap().end())}};
}

// Row-major n x n values as rows (zeros where the response has fewer).
std::vector<std::vector<double>> Square(
    const google::protobuf::RepeatedField<double>& v, size_t n) {
  std::vector<std::vector<double>> m(n, std::vector<double>(n, 0));
  for (size_t i = 0; i < n * n && i < static_cast<size_t>(v.size()); ++i) {
    m[i / n][i % n] = v.Get(static_cast<int>(i));
  }
  return m;
}

mergeserve::ChartData ToChart(const mergeserve::v1::AnalyzeMergeResponse& r) {
  const size_t n = static_cast<size_t>(r.experts_size());
  mergeserve::ChartData chart;
  chart.method = r.method();
  chart.experts.assign(r.experts().begin(), r.experts().end());
  for (const auto& t : r.tensors()) {
    chart.tensors.push_back(t.name());
    chart.conflict_rate.push_back(t.conflict_rate());
  }
  chart.overall_conflict_rate = r.overall().conflict_rate();
  chart.cosine = Square(r.overall().cosine(), n);
  if (r.overall().subspace_overlap_size() > 0) {
    chart.subspace_overlap = Square(r.overall().subspace_overlap(), n);
  }
  for (const auto& l : r.layers()) {
    chart.layers.push_back(mergeserve::LayerLabel(l.layer()));
    chart.layer_conflict_rate.push_back(l.conflict_rate());
    chart.layer_overlap.push_back(l.subspace_overlap());
    chart.layer_matrices.push_back(l.matrices());
  }
  return chart;
}

// Mean of the off-diagonal entries of a row-major n x n matrix.
double MeanPairwise(const google::protobuf::RepeatedField<double>& v,
                    size_t n) {
  double sum = 0;
  int pairs = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n && i * n + j < static_cast<size_t>(v.size());
         ++j, ++pairs) {
      sum += v.Get(static_cast<int>(i * n + j));
    }
  }
  return pairs > 0 ? sum / pairs : 0;
}

}  // namespace

int RunAnalyzeVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch) {
  const auto& pos = args.positional;
  if (pos[0] != "analyze") return -1;
  std::string yaml;
  if (int rc = ReadConfigArg(args, "analyze", &yaml); rc != 0) return rc;
  mergeserve::v1::AnalyzeMergeRequest req;
  req.mutable_spec()->set_config_yaml(yaml);
  mergeserve::v1::AnalyzeMergeResponse resp;
  grpc::ClientContext ctx;
  auto stub = mergeserve::v1::MergeService::NewStub(ch);
  grpc::Status s = stub->AnalyzeMerge(&ctx, req, &resp);
  if (!s.ok()) return Fail(s, args.server);
  const size_t n = static_cast<size_t>(resp.experts_size());
  const mergeserve::ChartData chart = ToChart(resp);
  if (!args.plot.empty()) {
    std::ofstream out(args.plot, std::ios::binary);
    out << mergeserve::RenderDiagnosticsChart(chart, args.plot);
    if (!out) {
      std::fprintf(stderr, "mergectl: cannot write %s\n", args.plot.c_str());
      return 1;
    }
  }
  if (args.json) {
    nlohmann::json j = {
        {"method", resp.method()},
        {"experts", std::vector<std::string>(resp.experts().begin(),
                                             resp.experts().end())},
        {"overall", ToJson(resp.overall())}};
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : resp.tensors()) j["tensors"].push_back(ToJson(t));
    j["layers"] = nlohmann::json::array();
    for (const auto& l : resp.layers()) {
      j["layers"].push_back({{"layer", l.layer()},
                             {"conflict_rate", l.conflict_rate()},
                             {"subspace_overlap", l.subspace_overlap()},
                             {"matrices", l.matrices()}});
    }
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::printf("%-48s %-24s %9s %10s %8s\n", "tensor", "kept % per expert",
              "conflict%", "|tau_m|", "overlap");
  auto row = [n](const mergeserve::v1::TensorDiagnostics& t) {
    std::string kept;
    for (double k : t.kept_fraction()) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "%5.1f ", 100 * k);
      kept += buf;
    }
    char overlap[16] = "-";
    if (t.subspace_overlap_size() > 0) {
      std::snprintf(overlap, sizeof overlap, "%.3f",
                    MeanPairwise(t.subspace_overlap(), n));
    }
    std::printf("%-48s %-24s %9.2f %10.4g %8s\n", t.name().c_str(),
                kept.c_str(), 100 * t.conflict_rate(), t.merged_norm(),
                overlap);
  };
  for (const auto& t : resp.tensors()) row(t);
  row(resp.overall());
  std::printf("\npairwise cosine of task vectors:\n");
  for (size_t i = 0; i < n; ++i) {
    std::printf("  %-16s", resp.experts(static_cast<int>(i)).c_str());
    for (size_t j = 0; j < n; ++j) {
      std::printf(" %7.3f", chart.cosine[i][j]);
    }
    std::printf("\n");
  }
  std::fputs(mergeserve::LayerTableText(chart).c_str(), stdout);
  if (!args.plot.empty())
    std::printf("\nchart written to %s\n", args.plot.c_str());
  return 0;
}

}  // namespace mergectl
