#include "mergeserve/ui/progress_bar.h"

#include <unistd.h>

#include <algorithm>

namespace mergeserve {

ProgressBar::ProgressBar(std::FILE* out, std::string label)
    : out_(out), label_(std::move(label)), tty_(isatty(fileno(out)) != 0) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(int64_t done, int64_t total,
                         const std::string& detail) {
  if (total <= 0) return;
  const double frac = std::clamp(static_cast<double>(done) / total, 0.0, 1.0);
  if (!tty_) {
    // Plain lines: one per tenth, and a fresh series when the detail (a
    // phase or file name) changes.
    if (detail != last_detail_) {
      last_detail_ = detail;
      last_decile_ = -1;
    }
    const int decile = static_cast<int>(frac * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(out_, "%s: %3d%% (%lld/%lld)%s%s\n", label_.c_str(),
                 decile * 10, static_cast<long long>(done),
                 static_cast<long long>(total), detail.empty() ? "" : " ",
                 detail.c_str());
    std::fflush(out_);
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_draw_ < std::chrono::milliseconds(80)) return;
  last_draw_ = now;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  std::string d =
      detail.size() > 40 ? "..." + detail.substr(detail.size() - 37) : detail;
  std::fprintf(out_, "\r\033[K%s [%s] %3d%% %lld/%lld %s", label_.c_str(),
               bar.c_str(), static_cast<int>(frac * 100),
               static_cast<long long>(done), static_cast<long long>(total),
               d.c_str());
  std::fflush(out_);
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  if (tty_ && last_draw_.time_since_epoch().count() != 0) {
    std::fprintf(out_, "\r\033[K");
    std::fflush(out_);
  }
}

}  // namespace mergeserve
