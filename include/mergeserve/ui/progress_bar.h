// A terminal progress bar that degrades to occasional plain lines when the
// output is not a terminal (logs, CI).
#ifndef MERGESERVE_UI_PROGRESS_BAR_H_
#define MERGESERVE_UI_PROGRESS_BAR_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace mergeserve {

class ProgressBar {
 public:
  // fd is where it draws (stderr); label precedes the bar.
  ProgressBar(std::FILE* out, std::string label);
  ~ProgressBar();
  void Update(int64_t done, int64_t total, const std::string& detail);
  void Finish();

 private:
  std::FILE* out_;
  std::string label_;
  bool tty_;
  bool finished_ = false;
  int last_decile_ = -1;
  std::string last_detail_;  // a new detail (phase) restarts the lines
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_UI_PROGRESS_BAR_H_
