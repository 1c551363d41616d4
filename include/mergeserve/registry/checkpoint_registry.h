// The registry: named base/expert/auxiliary checkpoints on the server's
// storage (an expert may carry a TorchScript program and a task), and the
// datasets of those tasks, validated when registered and persisted in
// SQLite. Everything belongs to a tenant and names are unique per tenant; a
// tenant sees its own records and the checkpoints an admin published to
// all. The registry deletes only files it stored itself (uploads). It knows
// nothing of gRPC; the service layer converts its types and errors.
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
#include "mergeserve/registry/storage_roots.h"
#include "mergeserve/store/database.h"
#include "mergeserve/store/page_token.h"

namespace mergeserve {

enum class CheckpointRole { kBase = 1, kExpert = 2, kAuxiliary = 3 };

struct TensorMeta {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

struct CheckpointRecord {
  std::string tenant;
  std::string name;
  CheckpointRole role = CheckpointRole::kExpert;
  std::string base;         // experts: the base they were fine-tuned from
  std::string base_tenant;  // the tenant that base belongs to
  std::string path;         // canonical server-side folder
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
  bool owned = false;      // uploaded: the server stored (and deletes) it
  bool published = false;  // visible to every tenant; only admins delete it
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
  std::string tenant;
  std::string name;
  std::string task;
  DatasetRole role = DatasetRole::kEval;
  std::string path;  // canonical server-side file
  std::string content_digest;
  int64_t examples = 0;
  bool has_labels = false;
  int64_t size_bytes = 0;
  int64_t create_time_ms = 0;
  bool owned = false;  // uploaded
};

// What the data-aware methods need of one expert: its program and its
// task's datasets (empty when none is registered for a role).
struct TaskBinding {
  std::string checkpoint;
  std::string path;  // the checkpoint's folder
  FileCheck check;   // what files opened from `path` must pass
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
    // Folders registrations may point into (never the data dir).
    std::vector<std::string> allowed_roots;
    // The database to use (default: DATA_DIR/mergeserve.db).
    std::shared_ptr<Database> db;
  };

  static absl::StatusOr<std::unique_ptr<CheckpointRegistry>> Create(
      Options options);

  // Validates `request.path` (inside an allowed root, outside the data dir,
  // every file too; a readable safetensors folder; an expert's tensors must
  // match its base's) and records it for `tenant`.
  absl::StatusOr<CheckpointRecord> Register(const std::string& tenant,
                                            const CheckpointRecord& request);
  // Records a folder the server itself stored under DATA_DIR/checkpoints
  // (an upload): the registry owns it and deletes it with the record.
  absl::StatusOr<CheckpointRecord> RegisterUpload(
      const std::string& tenant, const CheckpointRecord& request);
  // `tenant`'s checkpoint, else a published one of that name.
  absl::StatusOr<CheckpointRecord> Get(const std::string& tenant,
                                       const std::string& name,
                                       bool with_tensors) const;
  absl::StatusOr<Page<CheckpointRecord>> List(
      const std::string& tenant, std::optional<CheckpointRole> role,
      const std::map<std::string, std::string>& labels,
      const PageRequest& page = {}) const;
  // Deletes `tenant`'s checkpoint (a published one only when `admin`), and
  // its files when the server stored them.
  absl::Status Delete(const std::string& tenant, const std::string& name,
                      bool admin);
  // Shows (or hides) `tenant`'s checkpoint to every tenant.
  absl::StatusOr<CheckpointRecord> Publish(const std::string& tenant,
                                           const std::string& name,
                                           bool published);

  absl::StatusOr<DatasetRecord> RegisterDataset(const std::string& tenant,
                                                const DatasetRecord& request);
  absl::StatusOr<DatasetRecord> RegisterDatasetUpload(
      const std::string& tenant, const DatasetRecord& request);
  absl::StatusOr<DatasetRecord> GetDataset(const std::string& tenant,
                                           const std::string& name) const;
  // Filters are optional (empty task: every task).
  absl::StatusOr<Page<DatasetRecord>> ListDatasets(
      const std::string& tenant, const std::string& task,
      std::optional<DatasetRole> role, const PageRequest& page = {}) const;
  absl::Status DeleteDataset(const std::string& tenant,
                             const std::string& name);
  // The program and task datasets of a checkpoint `tenant` can see (the
  // datasets are `tenant`'s).
  absl::StatusOr<TaskBinding> Binding(const std::string& tenant,
                                      const std::string& checkpoint) const;

  // Maps checkpoint names in `tenant`'s merge configs to their folders,
  // with the file check each folder's files must pass.
  ModelResolver Resolver(const std::string& tenant) const;
  // Bytes of the files the server stores for `tenant` (uploads).
  absl::StatusOr<int64_t> StoredBytes(const std::string& tenant) const;
  const StorageRoots& roots() const { return roots_; }
  const std::string& data_dir() const { return roots_.data_dir(); }
  Database& db() { return *db_; }

  // The check files of `record`'s folder must pass.
  FileCheck FileCheckFor(const CheckpointRecord& record) const;
  // Letters, digits, '.', '_', '-'; 1 to 128 characters.
  static bool IsValidName(const std::string& name);
  // A checkpoint's name may also take the Hub's form: ORG/NAME, with an
  // optional @REVISION (each part a valid name), so configs copied from
  // model cards name registered checkpoints unchanged.
  static bool IsValidCheckpointName(const std::string& name);
  // INVALID_ARGUMENT naming the bad name (abbreviated) unless valid (by
  // IsValidCheckpointName when `what` is "checkpoint").
  static absl::Status CheckName(const char* what, const std::string& name);

 private:
  CheckpointRegistry() = default;
  absl::StatusOr<CheckpointRecord> Insert(const std::string& tenant,
                                          CheckpointRecord request, bool owned);
  absl::StatusOr<DatasetRecord> InsertDataset(const std::string& tenant,
                                              DatasetRecord request,
                                              bool owned);
  absl::Status CheckProgram(CheckpointRecord& c) const;
  absl::Status MigrateSchema();
  absl::StatusOr<CheckpointRecord> GetOwn(const std::string& tenant,
                                          const std::string& name,
                                          bool with_tensors) const;

  StorageRoots roots_;
  std::shared_ptr<Database> db_;
};

std::string RoleName(CheckpointRole role);

}  // namespace mergeserve

#endif  // MERGESERVE_REGISTRY_CHECKPOINT_REGISTRY_H_
