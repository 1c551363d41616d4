// `mergeserve analyze CONFIG.yaml`: the TIES paper's diagnostics of a merge
// (kept fractions, sign conflicts, norms, cosines), as a table, JSON or an
// SVG chart. Nothing is written but the chart.
#ifndef MERGESERVE_CLI_ANALYZE_COMMAND_H_
#define MERGESERVE_CLI_ANALYZE_COMMAND_H_

#include <string>
#include <vector>

#include "mergeserve/engine/diagnostics.h"

namespace mergeserve {

int RunAnalyzeCommand(const std::vector<std::string>& args);
struct ChartData;
// The chart's data: conflict rate per tensor and the overall cosines.
ChartData ToChart(const MergeDiagnostics& d);

}  // namespace mergeserve

#endif  // MERGESERVE_CLI_ANALYZE_COMMAND_H_
