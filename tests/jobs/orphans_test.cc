#include "mergeserve/jobs/orphans.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/format/safetensors_writer.h"
#include "test_util.h"

namespace mergeserve {
namespace {

namespace fs = std::filesystem;

void Touch(const fs::path& p) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << "x";
}

// What a crashed process leaves: its temporaries go, finished files stay,
// and a live replica's temporaries (its tag in the name) stay too.
TEST(OrphansTest, RemovesTemporariesButNotResultsOrALiveReplicasWork) {
  const fs::path data = testing::TempDir("orphans");
  const std::string tmp = kTempSuffix;
  const std::string dead = TempTagFor("replica-dead");
  const std::string live = TempTagFor("replica-live");
  const std::vector<fs::path> doomed = {
      data / "uploads" / "up-1" / "model.safetensors",
      data / "scratch" / "sweep-1",
      data / "results" / ("job-1" + tmp + "123-abc") / "model.safetensors",
      data / "results" / ("job-2" + tmp + dead + "1-ab"),
      data / "checkpoints" / ("ckpt" + tmp + "9-00"),
      data / "stats" / "fisher.tmp-1",
      data / "stats" / "scratch-ri-1",
  };
  const std::vector<fs::path> kept = {
      data / "results" / "job-1" / "model.safetensors",
      data / "checkpoints" / "ckpt" / "model.safetensors",
      data / "stats" / "fisher-abc",
      data / "results" / ("job-3" + tmp + live + "1-ab"),
      data / "uploads" / ("up-2" + live),
      data / "tokens.db",
  };
  for (const fs::path& p : doomed) Touch(p);
  for (const fs::path& p : kept) Touch(p);
  std::vector<std::string> removed =
      CollectOrphanedTemporaries(data.string(), {"replica-live"});
  for (const fs::path& p : kept) EXPECT_TRUE(fs::exists(p)) << p;
  std::vector<std::string> expected;
  for (fs::path p : doomed) {
    // The entry directly under its folder is what goes.
    while (p.parent_path().parent_path() != data) p = p.parent_path();
    EXPECT_FALSE(fs::exists(p)) << p;
    expected.push_back(p.string());
  }
  std::sort(removed.begin(), removed.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(removed, expected);
  // Nothing left to do the second time; a missing data dir is no error.
  EXPECT_TRUE(
      CollectOrphanedTemporaries(data.string(), {"replica-live"}).empty());
  EXPECT_TRUE(CollectOrphanedTemporaries((data / "none").string(), {}).empty());
}

}  // namespace
}  // namespace mergeserve
