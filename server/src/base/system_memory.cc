#include "mergeserve/base/system_memory.h"

#include <algorithm>
#include <fstream>
#include <string>

namespace mergeserve {
namespace {

int64_t ReadNumber(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return 0;
  try {
    return std::stoll(s);
  } catch (...) {
    return 0;
  }
}

int64_t MemTotal() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  int64_t kb = 0;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") return kb * 1024;
  }
  return 0;
}

}  // namespace

int64_t UsableMemoryBytes() {
  const int64_t ram = MemTotal();
  int64_t cgroup = ReadNumber("/sys/fs/cgroup/memory.max");  // v2
  if (cgroup == 0) {
    cgroup = ReadNumber("/sys/fs/cgroup/memory/memory.limit_in_bytes");  // v1
  }
  // v1 reports "no limit" as a huge number.
  if (cgroup <= 0 || (ram > 0 && cgroup > ram)) return ram;
  return cgroup;
}

}  // namespace mergeserve
