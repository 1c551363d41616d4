#include "mergeserve/jobs/scratch_pool.h"

#include <cstddef>
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
  ++taken_;
  return k.path;
}

std::vector<std::string> ScratchPool::DropOldest(size_t n) {
  std::vector<std::string> doomed;
  for (size_t i = 0; i < n; ++i) {
    bytes_ -= kept_[i].bytes;
    doomed.push_back(std::move(kept_[i].path));
  }
  kept_.erase(kept_.begin(), kept_.begin() + static_cast<ptrdiff_t>(n));
  return doomed;
}

void ScratchPool::Shrink(int64_t max_bytes) {
  std::vector<std::string> doomed;
  {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    for (int64_t left = bytes_; n < kept_.size() && left > max_bytes; ++n) {
      left -= kept_[n].bytes;
    }
    doomed = DropOldest(n);
  }
  std::error_code ec;
  for (const std::string& d : doomed) fs::remove_all(d, ec);
}

void ScratchPool::DropIdle(std::chrono::steady_clock::duration idle) {
  const auto before = std::chrono::steady_clock::now() - idle;
  std::vector<std::string> doomed;
  {
    absl::MutexLock lock(&mu_);
    size_t n = 0;
    while (n < kept_.size() && kept_[n].at < before) ++n;
    doomed = DropOldest(n);
  }
  std::error_code ec;
  for (const std::string& d : doomed) fs::remove_all(d, ec);
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
        kept_.push_back({path, bytes, std::chrono::steady_clock::now()});
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

int64_t ScratchPool::taken() const {
  absl::MutexLock lock(&mu_);
  return taken_;
}

}  // namespace mergeserve
