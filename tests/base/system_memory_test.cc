#include "mergeserve/base/system_memory.h"

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

int64_t CgroupLimit() {
  for (const char* path : {"/sys/fs/cgroup/memory.max",
                           "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    std::string s;
    if (in >> s && s != "max") return std::stoll(s);
  }
  return 0;
}

// The memory budget's default: the container's limit where it is below the
// machine's RAM, else the RAM.
TEST(SystemMemoryTest, TheSmallerOfRamAndTheContainersLimit) {
  const int64_t ram = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) *
                      static_cast<int64_t>(sysconf(_SC_PAGESIZE));
  ASSERT_GT(ram, 0);
  const int64_t usable = UsableMemoryBytes();
  EXPECT_GT(usable, 0);
  EXPECT_LE(usable, ram);
  const int64_t limit = CgroupLimit();
  if (limit > 0 && limit < ram) {
    EXPECT_EQ(usable, limit);
  } else {
    // The RAM as /proc/meminfo has it: whole KiB (under LXCFS it may show
    // a container's share, never more than the kernel's figure).
    EXPECT_GT(usable, ram / 8);
  }
}

}  // namespace
}  // namespace mergeserve
