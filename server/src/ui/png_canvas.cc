#include "mergeserve/ui/png_canvas.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <map>

namespace mergeserve {
namespace {

// 5x7 glyphs, rows top to bottom, '#' = ink.
const std::map<char, std::string>& Glyphs() {
  static const auto* kGlyphs = new std::map<char, std::string>{
      {' ', "                                   "},
      {'A', " ### #   ##   #######   ##   ##   #"},
      {'B', "#### #   ##   ##### #   ##   ##### "},
      {'C', " ### #   ##    #    #    #   # ### "},
      {'D', "#### #   ##   ##   ##   ##   ##### "},
      {'E', "######    #    #### #    #    #####"},
      {'F', "######    #    #### #    #    #    "},
      {'G', " ### #   ##    # ####   ##   # ####"},
      {'H', "#   ##   ##   #######   ##   ##   #"},
      {'I', " ###   #    #    #    #    #   ### "},
      {'J', "  ###   #    #    #    # #  #  ##  "},
      {'K', "#   ##  # # #  ##   # #  #  # #   #"},
      {'L', "#    #    #    #    #    #    #####"},
      {'M', "#   ### ### # ## # ##   ##   ##   #"},
      {'N', "#   ##   ###  ## # ##  ###   ##   #"},
      {'O', " ### #   ##   ##   ##   ##   # ### "},
      {'P', "#### #   ##   ##### #    #    #    "},
      {'Q', " ### #   ##   ##   ## # ##  #  ## #"},
      {'R', "#### #   ##   ##### # #  #  # #   #"},
      {'S', " #####    #     ###     #    ##### "},
      {'T', "#####  #    #    #    #    #    #  "},
      {'U', "#   ##   ##   ##   ##   ##   # ### "},
      {'V', "#   ##   ##   ##   ##   # # #   #  "},
      {'W', "#   ##   ##   ## # ## # ## # # # # "},
      {'X', "#   ##   # # #   #   # # #   ##   #"},
      {'Y', "#   ##   # # #   #    #    #    #  "},
      {'Z', "#####    #   #   #   #   #    #####"},
      {'0', " ### #   ##  ### # ###  ##   # ### "},
      {'1', "  #   ##    #    #    #    #   ### "},
      {'2', " ### #   #    #   #   #   #   #####"},
      {'3', "#####   #   #     #     ##   # ### "},
      {'4', "   #   ##  # # #  # #####   #    # "},
      {'5', "######    ####     #    ##   # ### "},
      {'6', "  ##  #   #    #### #   ##   # ### "},
      {'7', "#####    #   #   #   #    #    #   "},
      {'8', " ### #   ##   # ### #   ##   # ### "},
      {'9', " ### #   ##   # ####    #   #  ##  "},
      {'.', "                          ##   ##  "},
      {',', "                     ##    #   #   "},
      {':', "      ##   ##        ##   ##       "},
      {'-', "               #####               "},
      {'_', "                              #####"},
      {'%', "##   ##  #   #   #   #   #  ##   ##"},
      {'(', "   #   #   #    #    #     #     # "},
      {')', " #     #     #    #    #   #   #   "},
      {'/', "         #   #   #   #   #         "},
      {'+', "       #    #  #####  #    #       "},
      {'=', "          #####     #####          "},
      {'[', " ###  #    #    #    #    #    ### "},
      {']', " ###    #    #    #    #    #  ### "},
      {'@', " ### #   ## #### # ## ####     ####"},
      {'\'', "  #    #                           "},
      {'?', " ### #   #    #   #   #         #  "},
  };
  return *kGlyphs;
}

void Put32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>(v >> s));
}

void Chunk(std::string& out, const char* type, const std::string& data) {
  Put32(out, static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  out += body;
  Put32(out, static_cast<uint32_t>(
                 crc32(0, reinterpret_cast<const Bytef*>(body.data()),
                       static_cast<uInt>(body.size()))));
}

}  // namespace

PngCanvas::PngCanvas(int width, int height, Rgb background)
    : width_(std::max(1, width)),
      height_(std::max(1, height)),
      pixels_(static_cast<size_t>(width_) * height_ * 3) {
  FillRect(0, 0, width_, height_, background);
}

void PngCanvas::FillRect(int x, int y, int w, int h, Rgb c) {
  const int x0 = std::max(0, x), y0 = std::max(0, y);
  const int x1 = std::min(width_, x + w), y1 = std::min(height_, y + h);
  for (int yy = y0; yy < y1; ++yy) {
    uint8_t* p = &pixels_[(static_cast<size_t>(yy) * width_ + x0) * 3];
    for (int xx = x0; xx < x1; ++xx, p += 3) {
      p[0] = c.r;
      p[1] = c.g;
      p[2] = c.b;
    }
  }
}

void PngCanvas::StrokeRect(int x, int y, int w, int h, Rgb c) {
  FillRect(x, y, w, 1, c);
  FillRect(x, y + h - 1, w, 1, c);
  FillRect(x, y, 1, h, c);
  FillRect(x + w - 1, y, 1, h, c);
}

void PngCanvas::DrawText(int x, int y, const std::string& text, Rgb c,
                         int scale) {
  const auto& glyphs = Glyphs();
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch =
        static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
    auto it = glyphs.find(ch);
    const std::string& g = it != glyphs.end() ? it->second : glyphs.at('?');
    const int gx = x + static_cast<int>(i) * 6 * scale;
    for (int row = 0; row < 7; ++row) {
      for (int col = 0; col < 5; ++col) {
        if (g[static_cast<size_t>(row) * 5 + static_cast<size_t>(col)] == '#') {
          FillRect(gx + col * scale, y + row * scale, scale, scale, c);
        }
      }
    }
  }
}

Rgb PngCanvas::At(int x, int y) const {
  const uint8_t* p = &pixels_[(static_cast<size_t>(y) * width_ + x) * 3];
  return {p[0], p[1], p[2]};
}

std::string PngCanvas::EncodePng() const {
  // Each row starts with filter type 0 (none).
  std::string raw;
  raw.reserve(static_cast<size_t>(height_) * (width_ * 3 + 1));
  for (int y = 0; y < height_; ++y) {
    raw.push_back(0);
    raw.append(reinterpret_cast<const char*>(
                   &pixels_[static_cast<size_t>(y) * width_ * 3]),
               static_cast<size_t>(width_) * 3);
  }
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string z(size, '\0');
  compress2(reinterpret_cast<Bytef*>(&z[0]), &size,
            reinterpret_cast<const Bytef*>(raw.data()),
            static_cast<uLong>(raw.size()), Z_BEST_COMPRESSION);
  z.resize(size);
  std::string out("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  Put32(ihdr, static_cast<uint32_t>(width_));
  Put32(ihdr, static_cast<uint32_t>(height_));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  Chunk(out, "IHDR", ihdr);
  Chunk(out, "IDAT", z);
  Chunk(out, "IEND", "");
  return out;
}

}  // namespace mergeserve
