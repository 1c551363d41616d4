// The registry: named base/expert/auxiliary checkpoints on the server's
// storage (an expert may carry a TorchScript program and a task), and the
// datasets of those tasks, validated when registered and persisted in
// SQLite. It knows nothing of gRPC; the service layer converts its types and
// errors.
#ifndef MERGESERVE_REGISTRY_CHECKPOINT_REGISTRY_H_
#define MERGESERVE_REGISTRY_CHECKPOINT_REGISTRY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_plan.h"
#include "mergeserve/format/dtype.h"
#include "mergeserve/store/sqlite_database.h"

namespace mergeserve {

enum class CheckpointRole { kBase = 1, kExpert = 2, kAuxiliary = 3 };

struct TensorMeta {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

struct CheckpointRecord {
  std::string name;
  CheckpointRole role = CheckpointRole::kExpert;
  std::string base;  // experts: the base they were fine-tuned from
  std::string path;  // canonical server-side folder
  std::map<std::string, std::string> labels;
  std::string content_digest;  // "sha256:<hex>"
  int64_t size_bytes = 0;
  int64_t tensor_count = 0;
  int64_t parameter_count = 0;
  int64_t create_time_ms = 0;       // Unix epoch
  std::vector<TensorMeta> tensors;  // filled when asked for
  // A TorchScript program mapping inputs to logits whose parameter names
  // are this checkpoint's tensor names (data-aware methods and evaluation
  // run it), and the task it solves. Both optional.
  std::string program;
  std::string program_digest;  // "sha256:<hex>" of the program file
  std::string task;
};

enum class DatasetRole {
  kEval = 1,
  kFisher = 2,
  kAuxiliary = 3,
  kValidation = 4
};
std::string DatasetRoleName(DatasetRole role);

// A safetensors file with `inputs` (float or integer ids) and, except for
// auxiliary data, `labels` (one integer per example), attached to a task.
struct DatasetRecord {
  std::string name;
  std::string task;
  DatasetRole role = DatasetRole::kEval;
  std::string path;  // canonical server-side file
  std::string content_digest;
  int64_t examples = 0;
  bool has_labels = false;
  int64_t size_bytes = 0;
  int64_t create_time_ms = 0;
};

// What the data-aware methods need of one expert: its program and its
// task's datasets (empty when none is registered for a role).
struct TaskBinding {
  std::string checkpoint;
  std::string path;  // the checkpoint's folder
  std::string task;
  std::string program;
  std::string program_digest;
  std::map<DatasetRole, DatasetRecord> datasets;  // the newest per role
};

class CheckpointRegistry {
 public:
  struct Options {
    // Holds mergeserve.db (and, for the service, uploads and artifacts).
    std::string data_dir;
    // Folders registrations may point into; the data dir is always allowed.
    std::vector<std::string> allowed_roots;
  };

  static absl::StatusOr<std::unique_ptr<CheckpointRegistry>> Create(
      Options options);

  // Validates `request.path` (inside a storage root, a readable safetensors
  // folder; an expert's tensors must match its base's) and records it.
  absl::StatusOr<CheckpointRecord> Register(const CheckpointRecord& request);
  absl::StatusOr<CheckpointRecord> Get(const std::string& name,
                                       bool with_tensors) const;
  absl::StatusOr<std::vector<CheckpointRecord>> List(
      std::optional<CheckpointRole> role,
      const std::map<std::string, std::string>& labels) const;
  absl::Status Delete(const std::string& name);

  absl::StatusOr<DatasetRecord> RegisterDataset(const DatasetRecord& request);
  absl::StatusOr<DatasetRecord> GetDataset(const std::string& name) const;
  // Filters are optional (empty task: every task).
  absl::StatusOr<std::vector<DatasetRecord>> ListDatasets(
      const std::string& task, std::optional<DatasetRole> role) const;
  absl::Status DeleteDataset(const std::string& name);
  // The program and task datasets of a registered checkpoint.
  absl::StatusOr<TaskBinding> Binding(const std::string& checkpoint) const;

  // Maps checkpoint names in a merge config to their folders.
  ModelResolver Resolver() const;
  const std::vector<std::string>& allowed_roots() const { return roots_; }
  const std::string& data_dir() const { return options_.data_dir; }

  // A folder's content digest: sha256 over "<file> <sha256>\n" lines of its
  // weight files in name order.
  static absl::StatusOr<std::string> FolderDigest(const std::string& dir);
  // Letters, digits, '.', '_', '-'; 1 to 128 characters.
  static bool IsValidName(const std::string& name);

 private:
  CheckpointRegistry() = default;
  absl::Status CheckInsideRoots(const std::string& canonical) const;
  absl::Status CheckProgram(CheckpointRecord& c) const;
  absl::Status InitDatasets();  // datasets.cc

  Options options_;
  std::vector<std::string> roots_;  // canonical
  std::unique_ptr<SqliteDatabase> db_;
};

std::string RoleName(CheckpointRole role);

}  // namespace mergeserve

#endif  // MERGESERVE_REGISTRY_CHECKPOINT_REGISTRY_H_
