// The PNG canvas: a valid PNG (signature, chunk CRCs, zlib data) whose
// pixels are what was drawn, and the diagnostics chart in PNG form.
#include "mergeserve/ui/png_canvas.h"

#include <zlib.h>

#include "gtest/gtest.h"
#include "mergeserve/ui/diagnostics_chart.h"

namespace mergeserve {
namespace {

uint32_t Get32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

// Checks the file structure and returns the raw scanlines.
std::string Decode(const std::string& png, int* w, int* h) {
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  size_t at = 8;
  while (at + 12 <= png.size()) {
    const uint32_t len = Get32(png, at);
    const std::string body = png.substr(at + 4, 4 + len);
    EXPECT_EQ(Get32(png, at + 8 + len),
              crc32(0, reinterpret_cast<const Bytef*>(body.data()),
                    static_cast<uInt>(body.size())))
        << body.substr(0, 4);
    const std::string type = body.substr(0, 4);
    if (type == "IHDR") {
      *w = static_cast<int>(Get32(body, 4));
      *h = static_cast<int>(Get32(body, 8));
      EXPECT_EQ(body[12], 8);  // bit depth
      EXPECT_EQ(body[13], 2);  // RGB
    }
    if (type == "IDAT") idat += body.substr(4);
    at += 12 + len;
  }
  EXPECT_EQ(at, png.size());
  std::string raw(static_cast<size_t>(*h) * (*w * 3 + 1), '\0');
  uLongf n = raw.size();
  EXPECT_EQ(uncompress(reinterpret_cast<Bytef*>(&raw[0]), &n,
                       reinterpret_cast<const Bytef*>(idat.data()),
                       static_cast<uLong>(idat.size())),
            Z_OK);
  EXPECT_EQ(n, raw.size());
  return raw;
}

TEST(PngCanvasTest, EncodesWhatWasDrawn) {
  PngCanvas c(30, 12);
  c.FillRect(10, 2, 5, 3, {200, 10, 20});
  c.DrawText(20, 2, "A", {0, 0, 0});
  int w = 0, h = 0;
  const std::string raw = Decode(c.EncodePng(), &w, &h);
  ASSERT_EQ(w, 30);
  ASSERT_EQ(h, 12);
  auto px = [&](int x, int y) {
    const size_t at = static_cast<size_t>(y) * (w * 3 + 1) + 1 + x * 3;
    return std::string(raw, at, 3);
  };
  EXPECT_EQ(px(0, 0), std::string("\xff\xff\xff", 3));
  EXPECT_EQ(px(10, 2), std::string("\xc8\x0a\x14", 3));
  EXPECT_EQ(px(14, 4), std::string("\xc8\x0a\x14", 3));
  EXPECT_EQ(px(15, 4), std::string("\xff\xff\xff", 3));
  // 'A': " ### " on top, "#####" in the middle row.
  EXPECT_EQ(px(20, 2), std::string("\xff\xff\xff", 3));
  EXPECT_EQ(px(21, 2), std::string("\0\0\0", 3));
  for (int x = 20; x < 25; ++x) EXPECT_EQ(px(x, 5), std::string("\0\0\0", 3));
  // Lower case draws as upper case; clipped drawing is safe.
  PngCanvas d(30, 12);
  d.DrawText(20, 2, "a", {0, 0, 0});
  d.FillRect(-5, -5, 100, 1, {1, 2, 3});
  EXPECT_EQ(d.At(21, 2).r, 0);
  EXPECT_EQ(d.At(29, 11).r, 255);
}

TEST(PngCanvasTest, DiagnosticsChartAsPng) {
  ChartData d;
  d.method = "ties";
  d.experts = {"math", "code"};
  d.tensors = {"model.layers.0.w", "model.layers.1.w"};
  d.conflict_rate = {0.25, 0.5};
  d.overall_conflict_rate = 0.375;
  d.cosine = {{1, -0.2}, {-0.2, 1}};
  int w = 0, h = 0;
  Decode(RenderDiagnosticsChart(d, "out.PNG"), &w, &h);
  EXPECT_GE(w, 900);
  EXPECT_GT(h, 200);
  EXPECT_EQ(RenderDiagnosticsChart(d, "out.svg").substr(0, 4), "<svg");
}

}  // namespace
}  // namespace mergeserve
