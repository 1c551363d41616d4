// An SVG chart of merge diagnostics: the sign-conflict rate per tensor and
// the cosine matrix of the task vectors. Shared by `mergeserve analyze` and
// `mergectl analyze --plot`.
#ifndef MERGESERVE_CLI_DIAGNOSTICS_CHART_H_
#define MERGESERVE_CLI_DIAGNOSTICS_CHART_H_

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
};

std::string RenderDiagnosticsSvg(const ChartData& d);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_DIAGNOSTICS_CHART_H_
