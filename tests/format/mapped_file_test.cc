// The SIGBUS guard: a file truncated or rewritten while mapped must fail
// the reader with DATA_LOSS naming the file, never kill the process.
#include "mergeserve/format/mapped_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/format/model_folder.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

std::string Bytes(size_t n, char c) { return std::string(n, c); }

TEST(MappedFileTest, ATruncatedFileReadsAsZerosAndReportsDataLoss) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const std::string path = testing::TempDir("sigbus") + "/f.bin";
  testing::WriteFile(path, Bytes(4 * page, 'x'));
  auto m = MappedFile::Open(path);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE((*m)->CheckUnchanged().ok());
  // Someone re-saves the file in place: it is cut to one page.
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(page)), 0);
  // Reading the lost pages would raise SIGBUS; the guard maps zeros.
  const uint8_t* data = (*m)->data();
  EXPECT_EQ(data[0], 'x');
  EXPECT_EQ(data[3 * page + 5], 0);
  absl::Status s = (*m)->CheckUnchanged();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  EXPECT_THAT(std::string(s.message()), HasSubstr("truncated"));
}

TEST(MappedFileTest, AnInPlaceRewriteOfTheSameSizeIsDetected) {
  const std::string path = testing::TempDir("rewrite") + "/f.bin";
  testing::WriteFile(path, Bytes(100, 'a'));
  auto m = MappedFile::Open(path);
  ASSERT_TRUE(m.ok());
  // A later modification time with the same size.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, "b", 1, 10), 1);
  ::close(fd);
  absl::Status s = (*m)->CheckUnchanged();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("modified"));
}

TEST(MappedFileTest, AFileReplacedByRenameKeepsTheMappedBytes) {
  // Atomic replacement (write a new file, rename over) does not touch the
  // mapped inode: what was opened stays consistent.
  const std::string dir = testing::TempDir("replace");
  testing::WriteFile(dir + "/f.bin", Bytes(64, 'a'));
  auto m = MappedFile::Open(dir + "/f.bin");
  ASSERT_TRUE(m.ok());
  testing::WriteFile(dir + "/g.bin", Bytes(8, 'b'));
  std::filesystem::rename(dir + "/g.bin", dir + "/f.bin");
  EXPECT_EQ((*m)->data()[63], 'a');
  EXPECT_TRUE((*m)->CheckUnchanged().ok());
}

TEST(MappedFileTest, RealPathResolvesSymlinksAndTheFolderCheckSeesIt) {
  const std::string dir = testing::TempDir("links");
  const std::string outside = testing::TempDir("outside");
  testing::WriteModel(outside + "/m", {{"w", {{2}, {1, 2}}}});
  std::filesystem::create_directories(dir + "/m");
  std::filesystem::create_symlink(
      std::filesystem::absolute(outside + "/m/model.safetensors"),
      dir + "/m/model.safetensors");
  auto m = MappedFile::Open(dir + "/m/model.safetensors");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->real_path(),
            std::filesystem::canonical(outside + "/m/model.safetensors"));
  // A folder opened with a check refuses the file by its real path.
  auto folder = ModelFolder::Open(dir + "/m", [&](const std::string& real) {
    return real.rfind(dir, 0) == 0
               ? absl::OkStatus()
               : absl::PermissionDeniedError("outside: " + real);
  });
  EXPECT_EQ(folder.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(folder.status().message()), HasSubstr(outside));
}

}  // namespace
}  // namespace mergeserve
