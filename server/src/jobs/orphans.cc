#include "mergeserve/jobs/orphans.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>

#include "mergeserve/base/log.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {
namespace fs = std::filesystem;

std::vector<std::string> CollectOrphanedTemporaries(
    const std::string& data_dir, const std::vector<std::string>& live) {
  // (folder, marker in an entry's name; "" = every entry)
  const std::vector<std::pair<std::string, std::string>> places = {
      {"uploads", ""},           // in-flight uploads
      {"scratch", ""},           // sweep points
      {"results", kTempSuffix},  // merges being written
      {"checkpoints", kTempSuffix},
      {"stats", ".tmp-"},     // statistics being computed
      {"stats", "scratch-"},  // RI's unadapted merge
  };
  std::vector<std::string> removed;
  for (const auto& [folder, marker] : places) {
    std::error_code ec;
    const fs::path dir = fs::path(data_dir) / folder;
    std::vector<fs::path> doomed;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (!marker.empty() && name.find(marker) == std::string::npos) continue;
      // Another replica that still renews its heartbeat is writing it.
      if (std::any_of(live.begin(), live.end(), [&](const std::string& r) {
            return name.find(TempTagFor(r)) != std::string::npos;
          })) {
        continue;
      }
      doomed.push_back(e.path());
    }
    for (const fs::path& p : doomed) {
      // One that cannot go (permissions) is reported, not counted: the next
      // start tries again.
      if (fs::remove_all(p, ec) == static_cast<std::uintmax_t>(-1) || ec) {
        LogEvent("orphan_not_removed",
                 {{"path", p.string()}, {"error", ec.message()}});
        continue;
      }
      removed.push_back(p.string());
      LogEvent("orphan_removed", {{"path", p.string()}});
    }
  }
  return removed;
}

}  // namespace mergeserve
