// Where registered files may live. Clients register folders under the
// server's allowed roots (never inside its data dir, where uploads and
// results live); uploads live in folders the server created. Every file is
// checked by its real path, with symlinks resolved, when registered and
// again when a merge, evaluation or statistic opens it.
#ifndef MERGESERVE_REGISTRY_STORAGE_ROOTS_H_
#define MERGESERVE_REGISTRY_STORAGE_ROOTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {

class StorageRoots {
 public:
  // Canonicalises the data dir (created if missing) and the roots (which
  // must be folders).
  static absl::StatusOr<StorageRoots> Create(
      const std::string& data_dir, const std::vector<std::string>& roots);

  const std::string& data_dir() const { return data_dir_; }
  const std::vector<std::string>& roots() const { return roots_; }

  // PERMISSION_DENIED unless `path` (resolved) lies under an allowed root
  // and outside the data dir. Returns the resolved path.
  absl::StatusOr<std::string> CheckClientPath(const std::string& path) const;
  // The check every file of a client-registered checkpoint must pass.
  FileCheck ClientFileCheck() const;
  // The check every file of a server-owned folder (an upload, a cached
  // statistic) must pass: it lies inside that folder.
  static FileCheck OwnedFileCheck(const std::string& folder);
  // Whether `path` (already resolved) lies inside `folder`.
  static bool IsInside(const std::string& path, const std::string& folder);

 private:
  std::string data_dir_;
  std::vector<std::string> roots_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_REGISTRY_STORAGE_ROOTS_H_
