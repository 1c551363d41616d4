// The registry's datasets: task data for evaluation, Fisher estimation and
// RI's auxiliary inputs.
#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_reader.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS datasets (
  name TEXT PRIMARY KEY,
  task TEXT NOT NULL,
  role INTEGER NOT NULL,
  path TEXT NOT NULL,
  content_digest TEXT NOT NULL,
  examples INTEGER NOT NULL,
  has_labels INTEGER NOT NULL,
  size_bytes INTEGER NOT NULL,
  create_time_ms INTEGER NOT NULL
))sql";

constexpr char kColumns[] =
    "name, task, role, path, content_digest, examples, has_labels, "
    "size_bytes, create_time_ms";

DatasetRecord FromRow(const SqlRow& r) {
  DatasetRecord d;
  d.name = SqlString(r[0]);
  d.task = SqlString(r[1]);
  d.role = static_cast<DatasetRole>(SqlInt(r[2]));
  d.path = SqlString(r[3]);
  d.content_digest = SqlString(r[4]);
  d.examples = SqlInt(r[5]);
  d.has_labels = SqlInt(r[6]) != 0;
  d.size_bytes = SqlInt(r[7]);
  d.create_time_ms = SqlInt(r[8]);
  return d;
}

}  // namespace

std::string DatasetRoleName(DatasetRole role) {
  switch (role) {
    case DatasetRole::kEval:
      return "eval";
    case DatasetRole::kFisher:
      return "fisher";
    case DatasetRole::kAuxiliary:
      return "auxiliary";
    case DatasetRole::kValidation:
      return "validation";
  }
  return "unknown";
}

absl::Status CheckpointRegistry::InitDatasets() { return db_->Exec(kSchema); }

absl::StatusOr<DatasetRecord> CheckpointRegistry::RegisterDataset(
    const DatasetRecord& request) {
  if (!IsValidName(request.name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid dataset name '", request.name,
                     "': use 1-128 letters, digits, '.', '_' or '-'"));
  }
  if (!IsValidName(request.task)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", request.name,
                     "' needs a task (letters, digits, '.', '_', '-')"));
  }
  if (request.role != DatasetRole::kEval &&
      request.role != DatasetRole::kFisher &&
      request.role != DatasetRole::kAuxiliary &&
      request.role != DatasetRole::kValidation) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", request.name,
                     "' needs a role: eval, validation, fisher or auxiliary"));
  }
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(request.path, ec);
  MS_RETURN_IF_ERROR(CheckInsideRoots(canonical.string()));
  if (!fs::is_regular_file(canonical, ec)) {
    return absl::NotFoundError(
        absl::StrCat("dataset file ", canonical.string(), " not found"));
  }
  auto reader = SafetensorsReader::Open(canonical.string());
  if (!reader.ok()) {
    return absl::Status(reader.status().code(),
                        absl::StrCat("dataset '", request.name,
                                     "': ", reader.status().message()));
  }
  const TensorInfo* inputs = (*reader)->Find("inputs");
  const TensorInfo* labels = (*reader)->Find("labels");
  if (inputs == nullptr || inputs->shape.empty() || inputs->shape[0] == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", request.name, "' needs a non-empty 'inputs' tensor"));
  }
  if (!IsMergeable(inputs->dtype) && inputs->dtype != DType::kI64 &&
      inputs->dtype != DType::kI32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", request.name, "': inputs must be float or integer ids"));
  }
  if (labels != nullptr &&
      (labels->shape != std::vector<int64_t>{inputs->shape[0]} ||
       (labels->dtype != DType::kI64 && labels->dtype != DType::kI32))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", request.name,
                     "': labels must be one integer per example of inputs"));
  }
  if (labels == nullptr && (request.role == DatasetRole::kEval ||
                            request.role == DatasetRole::kValidation)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", request.name, "' is for evaluation but has no 'labels'"));
  }
  DatasetRecord d = request;
  d.path = canonical.string();
  d.examples = inputs->shape[0];
  d.has_labels = labels != nullptr;
  d.size_bytes = static_cast<int64_t>(fs::file_size(canonical, ec));
  MS_ASSIGN_OR_RETURN(std::string h, Sha256File(d.path));
  d.content_digest = "sha256:" + h;
  d.create_time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        auto existing,
        db_->Query("SELECT 1 FROM datasets WHERE name = ?", {d.name}));
    if (!existing.empty()) {
      return absl::AlreadyExistsError(
          absl::StrCat("dataset '", d.name, "' already exists"));
    }
    return db_->Exec(
        absl::StrCat("INSERT INTO datasets (", kColumns,
                     ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        {d.name, d.task, static_cast<int64_t>(d.role), d.path, d.content_digest,
         d.examples, static_cast<int64_t>(d.has_labels), d.size_bytes,
         d.create_time_ms});
  }));
  LogEvent("dataset_registered", {{"dataset", d.name},
                                  {"task", d.task},
                                  {"role", DatasetRoleName(d.role)},
                                  {"examples", std::to_string(d.examples)}});
  return d;
}

absl::StatusOr<DatasetRecord> CheckpointRegistry::GetDataset(
    const std::string& name) const {
  MS_ASSIGN_OR_RETURN(auto rows,
                      db_->Query(absl::StrCat("SELECT ", kColumns,
                                              " FROM datasets WHERE name = ?"),
                                 {name}));
  if (rows.empty()) {
    return absl::NotFoundError(absl::StrCat("dataset '", name, "' not found"));
  }
  return FromRow(rows[0]);
}

absl::StatusOr<std::vector<DatasetRecord>> CheckpointRegistry::ListDatasets(
    const std::string& task, std::optional<DatasetRole> role) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              " FROM datasets ORDER BY create_time_ms, name")));
  std::vector<DatasetRecord> out;
  for (const SqlRow& r : rows) {
    DatasetRecord d = FromRow(r);
    if (!task.empty() && d.task != task) continue;
    if (role && d.role != *role) continue;
    out.push_back(std::move(d));
  }
  return out;
}

absl::Status CheckpointRegistry::DeleteDataset(const std::string& name) {
  return db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(DatasetRecord d, GetDataset(name));
    MS_RETURN_IF_ERROR(
        db_->Exec("DELETE FROM datasets WHERE name = ?", {name}));
    // Uploaded datasets live in the data dir and go with their record.
    const fs::path uploads = fs::path(options_.data_dir) / "datasets";
    const fs::path rel = fs::path(d.path).lexically_relative(uploads);
    // Uploads are datasets/<name>-<hex>/<file>: the folder is the upload's.
    if (!rel.empty() && *rel.begin() != ".." &&
        std::distance(rel.begin(), rel.end()) == 2) {
      std::error_code ec;
      fs::remove_all(fs::path(d.path).parent_path(), ec);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<TaskBinding> CheckpointRegistry::Binding(
    const std::string& checkpoint) const {
  MS_ASSIGN_OR_RETURN(CheckpointRecord c, Get(checkpoint, false));
  TaskBinding b;
  b.checkpoint = c.name;
  b.path = c.path;
  b.task = c.task;
  b.program = c.program;
  b.program_digest = c.program_digest;
  if (!c.task.empty()) {
    MS_ASSIGN_OR_RETURN(auto all, ListDatasets(c.task, std::nullopt));
    for (DatasetRecord& d : all) b.datasets[d.role] = std::move(d);
  }
  return b;
}

}  // namespace mergeserve
