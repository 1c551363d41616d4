// The LibTorch module's engine table.
#include <dirent.h>

#include <set>
#include <string>

#include "engine/engine_aten.h"
#include "gtest/gtest.h"

namespace mergeserve {
namespace {

// The ids of this process's threads.
std::set<std::string> ThreadIds() {
  std::set<std::string> ids;
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return ids;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ids.insert(e->d_name);
  }
  ::closedir(dir);
  return ids;
}

// at::set_num_threads rebuilds LibTorch's worker pool even at the count it
// has, and each new worker spins for about 30 ms before it sleeps; the
// executor sets the count for every merge. The same count again must leave
// the workers as they are, a new one still rebuild them.
TEST(EngineAtenModuleTest, SameThreadCountKeepsLibTorchsWorkers) {
  auto aten = EngineAten("this test");
  ASSERT_TRUE(aten.ok()) << aten.status();
  (*aten)->set_num_threads(3);
  const std::set<std::string> three = ThreadIds();
  (*aten)->set_num_threads(3);
  EXPECT_EQ(ThreadIds(), three);
  // A new count starts new workers: what the test would see if the same
  // count did too.
  (*aten)->set_num_threads(2);
  const std::set<std::string> two = ThreadIds();
  EXPECT_NE(two, three);
  (*aten)->set_num_threads(2);
  EXPECT_EQ(ThreadIds(), two);
}

}  // namespace
}  // namespace mergeserve
