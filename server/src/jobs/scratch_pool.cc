#include "mergeserve/jobs/scratch_pool.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mergeserve {
namespace fs = std::filesystem;

namespace {

int64_t FolderBytes(const std::string& folder) {
  int64_t bytes = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    std::error_code size_ec;
    const auto n = e.file_size(size_ec);
    if (!size_ec) bytes += static_cast<int64_t>(n);
  }
  return bytes;
}

}  // namespace

ScratchPool::ScratchPool(std::string dir, int64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {}

std::string ScratchPool::Take() {
  absl::MutexLock lock(&mu_);
  if (kept_.empty()) return "";
  Kept k = std::move(kept_.back());
  kept_.pop_back();
  bytes_ -= k.bytes;
  return k.path;
}

void ScratchPool::Keep(const std::string& folder) {
  const int64_t bytes = FolderBytes(folder);
  std::error_code ec;
  {
    absl::MutexLock lock(&mu_);
    if (bytes_ + bytes <= max_bytes_) {
      const std::string path = absl::StrCat(dir_, "/kept-", next_++);
      fs::create_directories(dir_, ec);
      if (!ec) fs::rename(folder, path, ec);
      if (!ec) {
        kept_.push_back({path, bytes});
        bytes_ += bytes;
        return;
      }
    }
  }
  fs::remove_all(folder, ec);
}

int64_t ScratchPool::kept_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace mergeserve
