#include "cli/diagnostics_chart.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mergeserve {
namespace {

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

std::string RenderDiagnosticsSvg(const ChartData& d) {
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
      width, height, Escape(d.method), 100 * d.overall_conflict_rate,
      Escape([&] {
        std::string x;
        for (const auto& name : d.experts)
          absl::StrAppend(&x, x.empty() ? "" : ", ", name);
        return x;
      }()));
  for (int i = 0; i < n; ++i) {
    const double rate = d.conflict_rate[static_cast<size_t>(i)];
    const int y = top + i * row;
    const int w = static_cast<int>(bar_w * rate);
    absl::StrAppendFormat(
        &s,
        "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n"
        "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
        "fill=\"#d9534f\"/>\n"
        "<text x=\"%d\" y=\"%d\">%.1f%%</text>\n",
        label_w - 6, y + 11, Escape(d.tensors[static_cast<size_t>(i)]), label_w,
        y + 2, w, row - 4, label_w + w + 4, y + 11, 100 * rate);
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
      const double c = d.cosine[static_cast<size_t>(i)][static_cast<size_t>(j)];
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

}  // namespace mergeserve
