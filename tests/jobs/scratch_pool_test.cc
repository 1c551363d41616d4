#include "mergeserve/jobs/scratch_pool.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;

// A finished point's folder holding one file of `bytes` bytes of `fill`.
std::string Folder(const std::string& path, size_t bytes, char fill) {
  fs::create_directories(path);
  std::ofstream(path + "/model.safetensors") << std::string(bytes, fill);
  return path;
}

char FirstByte(const std::string& folder) {
  std::ifstream in(folder + "/model.safetensors");
  return static_cast<char>(in.get());
}

TEST(ScratchPoolTest, KeepsFoldersWithinItsBytesAndHandsOutTheLatestFirst) {
  const std::string root = testing::TempDir("pool");
  ScratchPool pool(root + "/pool", 2048);
  EXPECT_EQ(pool.Take(), "");

  const std::string a = Folder(root + "/sweep-a", 1024, 'a');
  const std::string b = Folder(root + "/sweep-b", 1024, 'b');
  const std::string c = Folder(root + "/sweep-c", 1, 'c');
  pool.Keep(a);
  pool.Keep(b);
  EXPECT_FALSE(fs::exists(a));
  EXPECT_FALSE(fs::exists(b));
  EXPECT_EQ(pool.kept_bytes(), 2048);
  pool.Keep(c);  // one byte over: removed, not kept
  EXPECT_FALSE(fs::exists(c));
  EXPECT_EQ(pool.kept_bytes(), 2048);

  const std::string first = pool.Take();
  ASSERT_TRUE(fs::exists(first));
  EXPECT_EQ(FirstByte(first), 'b');  // the latest kept
  EXPECT_EQ(pool.kept_bytes(), 1024);
  const std::string second = pool.Take();
  EXPECT_EQ(FirstByte(second), 'a');
  EXPECT_EQ(pool.Take(), "");
  EXPECT_EQ(pool.kept_bytes(), 0);
  // Taken folders are the caller's: the pool does not touch them again.
  EXPECT_TRUE(fs::exists(first));
  EXPECT_TRUE(fs::exists(second));
  EXPECT_EQ(pool.taken(), 2);
}

// What a batch does not take goes (Shrink), oldest first, and so does what
// has been idle (DropIdle): the files are merges of a tenant's checkpoints.
TEST(ScratchPoolTest, ShrinksOldestFirstAndDropsIdleFolders) {
  const std::string root = testing::TempDir("pool");
  ScratchPool pool(root + "/pool", 1 << 20);
  for (char c : {'a', 'b', 'c'}) {
    pool.Keep(Folder(root + "/sweep-" + std::string(1, c), 100, c));
  }
  EXPECT_EQ(pool.kept_bytes(), 300);
  pool.Shrink(150);  // a and b go
  EXPECT_EQ(pool.kept_bytes(), 100);
  pool.Keep(Folder(root + "/sweep-d", 100, 'd'));
  pool.DropIdle(std::chrono::hours(1));  // none is that old
  EXPECT_EQ(pool.kept_bytes(), 200);
  pool.DropIdle(std::chrono::seconds(0));
  EXPECT_EQ(pool.kept_bytes(), 0);
  EXPECT_EQ(pool.Take(), "");
  // Nothing of theirs is left on disk.
  size_t left = 0;
  for (const auto& e : fs::recursive_directory_iterator(root + "/pool")) {
    left += e.is_regular_file();
  }
  EXPECT_EQ(left, 0u);
}

}  // namespace
}  // namespace mergeserve
