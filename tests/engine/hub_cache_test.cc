// Hub ids resolved offline from a Hugging Face cache folder: main, a
// branch or tag through refs/, a commit, and a clear error that says where
// it looked.
#include "mergeserve/engine/hub_cache.h"

#include <cstdlib>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

TEST(HubCacheTest, IdsAreToldFromPaths) {
  EXPECT_TRUE(LooksLikeHubId("meta-llama/Llama-2-7b"));
  EXPECT_TRUE(LooksLikeHubId("org/name@v1.0"));
  for (const char* p :
       {"./org/name", "/abs/path", "name", "a/b/c", "~/x/y", "org/../x", "/"}) {
    EXPECT_FALSE(LooksLikeHubId(p)) << p;
  }
}

TEST(HubCacheTest, MainBranchesTagsAndCommitsResolveOffline) {
  const std::string cache = testing::TempDir("hf-cache");
  const std::string repo = cache + "/models--org--tiny";
  testing::WriteModel(repo + "/snapshots/c0ffee", {{"w", {{2}, {1, 2}}}});
  testing::WriteModel(repo + "/snapshots/beef42", {{"w", {{2}, {5, 6}}}});
  std::filesystem::create_directories(repo + "/refs");
  testing::WriteFile(repo + "/refs/main", "c0ffee\n");
  testing::WriteFile(repo + "/refs/v2", "beef42");
  EXPECT_EQ(*FindInHubCache("org/tiny", cache), repo + "/snapshots/c0ffee");
  EXPECT_EQ(*FindInHubCache("org/tiny@v2", cache), repo + "/snapshots/beef42");
  EXPECT_EQ(*FindInHubCache("org/tiny@c0ffee", cache),
            repo + "/snapshots/c0ffee");
  auto missing = FindInHubCache("org/other", cache);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("no models--org--other in the cache"));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(cache));
  EXPECT_THAT(
      std::string(FindInHubCache("org/tiny@v9", cache).status().message()),
      HasSubstr("revision 'v9' is not in the cache"));
  // A one-shot merge names the model as users write it.
  setenv("HF_HUB_CACHE", cache.c_str(), 1);
  const std::string dir = testing::TempDir("hub-merge");
  auto out = testing::Merge(
      dir, "merge_method: linear\nmodels: [org/tiny, org/tiny@v2]\n");
  unsetenv("HF_HUB_CACHE");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_THAT((*out)["w"], ::testing::ElementsAre(3, 4));
}

}  // namespace
}  // namespace mergeserve
