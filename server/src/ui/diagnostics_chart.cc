#include "mergeserve/ui/diagnostics_chart.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/ui/png_canvas.h"

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

std::string LayerLabel(int layer) {
  return layer >= 0 ? absl::StrCat("layer ", layer) : "other";
}

std::string LayerTableText(const ChartData& d) {
  if (d.subspace_overlap.empty()) return "";
  std::string s = absl::StrFormat("\n%-16s %9s %9s %9s\n", "layer", "conflict%",
                                  "overlap", "matrices");
  for (size_t i = 0; i < d.layers.size(); ++i) {
    absl::StrAppendFormat(&s, "%-16s %9.2f %9.3f %9d\n", d.layers[i],
                          100 * d.layer_conflict_rate[i], d.layer_overlap[i],
                          d.layer_matrices[i]);
  }
  s += "\npairwise overlap of the tasks' top singular subspaces (mean over "
       "matrices):\n";
  for (size_t i = 0; i < d.experts.size() && i < d.subspace_overlap.size();
       ++i) {
    absl::StrAppendFormat(&s, "  %-16s", d.experts[i]);
    for (double v : d.subspace_overlap[i])
      absl::StrAppendFormat(&s, " %7.3f", v);
    s += "\n";
  }
  return s;
}

std::string RenderDiagnosticsSvg(const ChartData& d) {
  const int row = 16, label_w = 330, bar_w = 360, top = 56;
  const int n = static_cast<int>(d.tensors.size());
  const int e = static_cast<int>(d.experts.size());
  const int cell = 36;
  const int width = label_w + bar_w + 80;
  const int nl = static_cast<int>(d.layers.size());
  const int height = top + (n + 1) * row + 60 + (e + 1) * cell + 40 +
                     (nl > 0 ? 40 + nl * row : 0);
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
  if (nl > 0) {
    const int ly = my + (e + 1) * cell + 30;
    absl::StrAppendFormat(
        &s,
        "<text x=\"10\" y=\"%d\" font-size=\"13\" font-weight=\"bold\">"
        "subspace overlap of the tasks' top singular vectors, per layer"
        "</text>\n",
        ly - 10);
    for (int i = 0; i < nl; ++i) {
      const double v = d.layer_overlap[static_cast<size_t>(i)];
      const int y = ly + i * row;
      const int w = static_cast<int>(bar_w * std::min(1.0, v));
      absl::StrAppendFormat(
          &s,
          "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n"
          "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
          "fill=\"#428bca\"/>\n"
          "<text x=\"%d\" y=\"%d\">%.3f</text>\n",
          label_w - 6, y + 11, Escape(d.layers[static_cast<size_t>(i)]),
          label_w, y + 2, w, row - 4, label_w + w + 4, y + 11, v);
    }
  }
  s += "</svg>\n";
  return s;
}

std::string RenderDiagnosticsPng(const ChartData& d) {
  // The SVG's layout at twice the font size: 14 px glyphs.
  const int k = 2, row = 22, top = 80, cell = 72;
  int label_w = 0;
  for (const auto& t : d.tensors) {
    label_w = std::max(label_w, PngCanvas::TextWidth(t, k));
  }
  for (const auto& e : d.experts) {
    label_w = std::max(label_w, PngCanvas::TextWidth(e, k));
  }
  label_w += 24;
  const int bar_w = 480;
  const int n = static_cast<int>(d.tensors.size());
  const int e = static_cast<int>(d.experts.size());
  const int width = std::max(label_w + bar_w + 140, label_w + e * cell + 20);
  const int nl = static_cast<int>(d.layers.size());
  const int height =
      top + (n + 1) * row + 70 + e * cell + 30 + (nl > 0 ? 60 + nl * row : 0);
  PngCanvas c(std::max(width, 900), height);
  const Rgb ink{0, 0, 0}, red{217, 83, 79}, grey{153, 153, 153};
  c.DrawText(12, 12,
             absl::StrFormat("%s: sign conflicts among kept entries "
                             "(overall %.1f%%)",
                             d.method, 100 * d.overall_conflict_rate),
             ink, k);
  std::string experts;
  for (const auto& name : d.experts) {
    absl::StrAppend(&experts, experts.empty() ? "" : ", ", name);
  }
  c.DrawText(12, 44, "experts: " + experts, ink, k);
  for (int i = 0; i < n; ++i) {
    const double rate = d.conflict_rate[static_cast<size_t>(i)];
    const int y = top + i * row;
    const std::string& name = d.tensors[static_cast<size_t>(i)];
    c.DrawText(label_w - 12 - PngCanvas::TextWidth(name, k), y + 4, name, ink,
               k);
    const int w = static_cast<int>(bar_w * rate);
    c.FillRect(label_w, y + 2, w, row - 4, red);
    c.DrawText(label_w + w + 8, y + 4, absl::StrFormat("%.1f%%", 100 * rate),
               ink, k);
  }
  const int my = top + (n + 1) * row + 50;
  c.DrawText(12, my - 34,
             "pairwise cosine of task vectors (all merged tensors)", ink, k);
  for (int i = 0; i < e; ++i) {
    const std::string& name = d.experts[static_cast<size_t>(i)];
    c.DrawText(label_w - 12 - PngCanvas::TextWidth(name, k),
               my + i * cell + cell / 2 - 7, name, ink, k);
    for (int j = 0; j < e; ++j) {
      const double v = d.cosine[static_cast<size_t>(i)][static_cast<size_t>(j)];
      const auto shade =
          static_cast<uint8_t>(255 * (1 - std::min(1.0, std::abs(v))));
      const Rgb fill = v >= 0 ? Rgb{shade, shade, 255} : Rgb{255, shade, shade};
      const int x = label_w + j * cell, y = my + i * cell;
      c.FillRect(x, y, cell, cell, fill);
      c.StrokeRect(x, y, cell, cell, grey);
      const std::string label = absl::StrFormat("%.2f", v);
      c.DrawText(x + (cell - PngCanvas::TextWidth(label, k)) / 2,
                 y + cell / 2 - 7, label,
                 shade < 110 ? Rgb{255, 255, 255} : ink, k);
    }
  }
  if (nl > 0) {
    const Rgb blue{66, 139, 202};
    const int ly = my + e * cell + 70;
    c.DrawText(12, ly - 34,
               "subspace overlap of the tasks' top singular vectors, per layer",
               ink, k);
    for (int i = 0; i < nl; ++i) {
      const double v = d.layer_overlap[static_cast<size_t>(i)];
      const int y = ly + i * row;
      const std::string& name = d.layers[static_cast<size_t>(i)];
      c.DrawText(label_w - 12 - PngCanvas::TextWidth(name, k), y + 4, name, ink,
                 k);
      const int w = static_cast<int>(bar_w * std::min(1.0, v));
      c.FillRect(label_w, y + 2, w, row - 4, blue);
      c.DrawText(label_w + w + 8, y + 4, absl::StrFormat("%.3f", v), ink, k);
    }
  }
  return c.EncodePng();
}

std::string RenderDiagnosticsChart(const ChartData& d,
                                   const std::string& file_name) {
  return absl::EndsWithIgnoreCase(file_name, ".png") ? RenderDiagnosticsPng(d)
                                                     : RenderDiagnosticsSvg(d);
}

}  // namespace mergeserve
