#include "mergeserve/registry/storage_roots.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

namespace fs = std::filesystem;

// A scratch tree:
//   base/roots/models/expert/       an allowed root and a folder in it
//   base/roots/models-evil/         a sibling whose name extends the root's
//   base/data/                      the server's data dir
//   base/outside/secret/
class StorageRootsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::canonical(testing::TempDir("storage_roots")).string();
    root_ = base_ + "/roots/models";
    fs::create_directories(root_ + "/expert");
    fs::create_directories(base_ + "/roots/models-evil");
    fs::create_directories(base_ + "/outside/secret");
    std::ofstream(root_ + "/expert/model.safetensors") << "x";
    auto roots = StorageRoots::Create(base_ + "/data", {root_});
    ASSERT_TRUE(roots.ok()) << roots.status();
    roots_ = *roots;
  }

  std::string base_, root_;
  StorageRoots roots_;
};

TEST_F(StorageRootsTest, PathsUnderARootResolveToTheirRealPath) {
  EXPECT_EQ(roots_.data_dir(), base_ + "/data");
  EXPECT_TRUE(fs::is_directory(base_ + "/data"));  // created
  auto expert = roots_.CheckClientPath(root_ + "/expert");
  ASSERT_TRUE(expert.ok()) << expert.status();
  EXPECT_EQ(*expert, root_ + "/expert");
  // Dots and doubled slashes resolve before the check.
  auto dotted = roots_.CheckClientPath(root_ + "/./expert//../expert");
  ASSERT_TRUE(dotted.ok()) << dotted.status();
  EXPECT_EQ(*dotted, root_ + "/expert");
  // A path that does not exist yet (weakly canonical) but would lie inside.
  EXPECT_TRUE(roots_.CheckClientPath(root_ + "/later/x").ok());
}

TEST_F(StorageRootsTest, PathsOutsideTheRootsAreDeniedNamingThePath) {
  for (const std::string& path :
       {base_ + "/outside/secret", root_ + "/../../outside/secret",
        base_ + "/roots/models-evil",  // a prefix of the name is not inside
        base_ + "/roots", std::string("/etc/passwd")}) {
    auto checked = roots_.CheckClientPath(path);
    EXPECT_EQ(checked.status().code(), absl::StatusCode::kPermissionDenied)
        << path;
    // Names the path and the roots (cut at 256 bytes: a deep temp dir would
    // cut the full path, so the tails).
    EXPECT_NE(checked.status().message().find(path.substr(path.size() - 10)),
              std::string::npos);
    EXPECT_NE(checked.status().message().find("roots/models"),
              std::string::npos);
  }
}

// Symlinks are followed before the check: one inside a root that points
// out is denied, one outside that points in is allowed (its target is what
// is read).
TEST_F(StorageRootsTest, SymlinksAreJudgedByTheirTarget) {
  fs::create_directory_symlink(base_ + "/outside/secret", root_ + "/escape");
  auto escape = roots_.CheckClientPath(root_ + "/escape");
  EXPECT_EQ(escape.status().code(), absl::StatusCode::kPermissionDenied);
  fs::create_directory_symlink(root_ + "/expert", base_ + "/outside/in");
  auto in = roots_.CheckClientPath(base_ + "/outside/in");
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(*in, root_ + "/expert");
  // The per-file check a merge runs on each resolved file.
  const FileCheck check = roots_.ClientFileCheck();
  EXPECT_TRUE(check(root_ + "/expert/model.safetensors").ok());
  EXPECT_EQ(check(base_ + "/outside/secret/x").code(),
            absl::StatusCode::kPermissionDenied);
}

// The data dir holds uploads and results: registering it (or a folder in
// it) by path would bypass the registry's ownership of those files, even
// where the data dir lies under a root.
TEST_F(StorageRootsTest, TheDataDirIsNeverAClientPath) {
  auto nested = StorageRoots::Create(root_ + "/data", {root_});
  ASSERT_TRUE(nested.ok()) << nested.status();
  for (const std::string& path : {root_ + "/data", root_ + "/data/results/x"}) {
    auto checked = nested->CheckClientPath(path);
    EXPECT_EQ(checked.status().code(), absl::StatusCode::kPermissionDenied)
        << path;
    EXPECT_NE(checked.status().message().find("data dir"), std::string::npos);
  }
  EXPECT_TRUE(nested->CheckClientPath(root_ + "/expert").ok());
}

TEST_F(StorageRootsTest, WithoutRootsOnlyUploadsAreAccepted) {
  auto none = StorageRoots::Create(base_ + "/data2", {});
  ASSERT_TRUE(none.ok());
  auto checked = none->CheckClientPath(root_ + "/expert");
  EXPECT_EQ(checked.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(checked.status().message().find("uploads only"), std::string::npos);
}

TEST_F(StorageRootsTest, RootsMustBeFolders) {
  for (const std::string& root :
       {root_ + "/expert/model.safetensors", base_ + "/missing"}) {
    auto r = StorageRoots::Create(base_ + "/data3", {root});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << root;
    EXPECT_NE(r.status().message().find(root), std::string::npos);
  }
}

TEST_F(StorageRootsTest, OwnedFilesStayInsideTheirFolder) {
  const FileCheck check = StorageRoots::OwnedFileCheck(base_ + "/data/up-1");
  EXPECT_TRUE(check(base_ + "/data/up-1/model.safetensors").ok());
  EXPECT_TRUE(check(base_ + "/data/up-1/sub/x").ok());
  EXPECT_EQ(check(base_ + "/data/up-10/model.safetensors").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(check(base_ + "/data/other").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(StorageRoots::IsInside("/a/b/c", "/a/b"));
  EXPECT_FALSE(StorageRoots::IsInside("/a/bc", "/a/b"));
  EXPECT_FALSE(StorageRoots::IsInside("/a", "/a/b"));
  EXPECT_FALSE(StorageRoots::IsInside("/x/y", "/a/b"));
}

}  // namespace
}  // namespace mergeserve
