// An SVG or PNG chart of merge diagnostics: the sign-conflict rate per tensor,
// the cosine matrix of the task vectors and the subspace overlap per layer.
// Shared by `mergeserve analyze` and `mergectl analyze --plot`.
#ifndef MERGESERVE_UI_DIAGNOSTICS_CHART_H_
#define MERGESERVE_UI_DIAGNOSTICS_CHART_H_

#include <string>
#include <vector>

namespace mergeserve {

struct ChartData {
  std::string method;
  std::vector<std::string> experts;
  std::vector<std::string> tensors;
  std::vector<double> conflict_rate;  // per tensor
  double overall_conflict_rate = 0;
  std::vector<std::vector<double>> cosine;  // experts x experts
  // Per layer ("layer N", "other"): mean pairwise overlap of the tasks' top
  // singular subspaces over its matrices, and the overall pairwise means
  // (empty without matrices).
  std::vector<std::string> layers;
  std::vector<double> layer_conflict_rate, layer_overlap;
  std::vector<int> layer_matrices;
  std::vector<std::vector<double>> subspace_overlap;  // experts x experts
};

// "layer N" for N >= 0, "other" for tensors outside layers.
std::string LayerLabel(int layer);
// The per-layer table and the pairwise overlap matrix, as the CLIs print
// them after the per-tensor table ("" without matrices).
std::string LayerTableText(const ChartData& d);

std::string RenderDiagnosticsSvg(const ChartData& d);
// The same chart as PNG bytes (built-in bitmap font, upper-case labels).
std::string RenderDiagnosticsPng(const ChartData& d);
// SVG or PNG by the file name's extension (.png, else SVG).
std::string RenderDiagnosticsChart(const ChartData& d,
                                   const std::string& file_name);

}  // namespace mergeserve

#endif  // MERGESERVE_UI_DIAGNOSTICS_CHART_H_
