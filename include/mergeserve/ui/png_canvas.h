// A small RGB canvas that draws filled rectangles and text (a built-in 5x7
// bitmap font, upper case) and encodes itself as PNG with zlib: enough for
// the diagnostics chart without a graphics library.
#ifndef MERGESERVE_UI_PNG_CANVAS_H_
#define MERGESERVE_UI_PNG_CANVAS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace mergeserve {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

class PngCanvas {
 public:
  PngCanvas(int width, int height, Rgb background = {255, 255, 255});

  void FillRect(int x, int y, int w, int h, Rgb color);
  void StrokeRect(int x, int y, int w, int h, Rgb color);
  // Text with its top-left corner at (x, y); `scale` multiplies the 5x7
  // glyphs (advance 6*scale, height 7*scale). Lower case is drawn as upper
  // case; characters without a glyph as '?'.
  void DrawText(int x, int y, const std::string& text, Rgb color,
                int scale = 1);
  static int TextWidth(const std::string& text, int scale = 1) {
    return static_cast<int>(text.size()) * 6 * scale;
  }
  // The image as a PNG file's bytes (8-bit RGB, zlib-compressed).
  std::string EncodePng() const;

  int width() const { return width_; }
  int height() const { return height_; }
  Rgb At(int x, int y) const;

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;  // RGB rows
};

}  // namespace mergeserve

#endif  // MERGESERVE_UI_PNG_CANVAS_H_
