#include "mergeserve/registry/storage_roots.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {
namespace fs = std::filesystem;

absl::StatusOr<StorageRoots> StorageRoots::Create(
    const std::string& data_dir, const std::vector<std::string>& roots) {
  std::error_code ec;
  fs::create_directories(data_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create data dir ", data_dir, ": ", ec.message()));
  }
  StorageRoots r;
  r.data_dir_ = fs::canonical(data_dir, ec).string();
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot resolve data dir ", data_dir, ": ", ec.message()));
  }
  for (const std::string& root : roots) {
    const fs::path canonical = fs::weakly_canonical(root, ec);
    if (ec || !fs::is_directory(canonical, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage root ", root, " is not a folder"));
    }
    r.roots_.push_back(canonical.string());
  }
  return r;
}

bool StorageRoots::IsInside(const std::string& path,
                            const std::string& folder) {
  const fs::path rel = fs::path(path).lexically_relative(folder);
  return !rel.empty() && *rel.begin() != "..";
}

absl::StatusOr<std::string> StorageRoots::CheckClientPath(
    const std::string& path) const {
  std::error_code ec;
  const std::string real = fs::weakly_canonical(path, ec).string();
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve path ", Abbreviate(path, 256)));
  }
  if (IsInside(real, data_dir_) || real == data_dir_) {
    return absl::PermissionDeniedError(absl::StrCat(
        "path ", Abbreviate(path, 256),
        " lies inside the server's data dir; register folders under an "
        "allowed root, or upload them"));
  }
  for (const std::string& root : roots_) {
    if (IsInside(real, root)) return real;
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "path ", Abbreviate(path, 256), " is outside the storage roots (",
      roots_.empty() ? "none: the server takes uploads only"
                     : absl::StrJoin(roots_, ", "),
      ")"));
}

FileCheck StorageRoots::ClientFileCheck() const {
  return [self = *this](const std::string& real) -> absl::Status {
    auto checked = self.CheckClientPath(real);
    if (checked.ok()) return absl::OkStatus();
    return absl::PermissionDeniedError(absl::StrCat(
        "file ", real,
        " (a symlink target) lies outside the storage roots or inside the "
        "data dir"));
  };
}

FileCheck StorageRoots::OwnedFileCheck(const std::string& folder) {
  return [folder](const std::string& real) -> absl::Status {
    if (IsInside(real, folder)) return absl::OkStatus();
    return absl::PermissionDeniedError(
        absl::StrCat("file ", real, " lies outside its server folder"));
  };
}

}  // namespace mergeserve
