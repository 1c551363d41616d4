// The registry's datasets: task data for evaluation, Fisher estimation and
// RI's auxiliary inputs, per tenant.
#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_reader.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/store/page_token.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kColumns[] =
    "tenant, name, task, role, path, content_digest, examples, has_labels, "
    "size_bytes, create_time_ms, owned";

DatasetRecord FromRow(const SqlRow& r) {
  DatasetRecord d;
  d.tenant = SqlString(r[0]);
  d.name = SqlString(r[1]);
  d.task = SqlString(r[2]);
  d.role = static_cast<DatasetRole>(SqlInt(r[3]));
  d.path = SqlString(r[4]);
  d.content_digest = SqlString(r[5]);
  d.examples = SqlInt(r[6]);
  d.has_labels = SqlInt(r[7]) != 0;
  d.size_bytes = SqlInt(r[8]);
  d.create_time_ms = SqlInt(r[9]);
  d.owned = SqlInt(r[10]) != 0;
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

absl::StatusOr<DatasetRecord> CheckpointRegistry::RegisterDataset(
    const std::string& tenant, const DatasetRecord& request) {
  MS_RETURN_IF_ERROR(CheckName("dataset", request.name));
  DatasetRecord d = request;
  MS_ASSIGN_OR_RETURN(d.path, roots_.CheckClientPath(request.path));
  return InsertDataset(tenant, std::move(d), /*owned=*/false);
}

absl::StatusOr<DatasetRecord> CheckpointRegistry::RegisterDatasetUpload(
    const std::string& tenant, const DatasetRecord& request) {
  MS_RETURN_IF_ERROR(CheckName("dataset", request.name));
  DatasetRecord d = request;
  std::error_code ec;
  d.path = fs::weakly_canonical(request.path, ec).string();
  if (!StorageRoots::IsInside(d.path, roots_.data_dir() + "/datasets")) {
    return absl::InternalError("an upload must be stored in the data dir");
  }
  return InsertDataset(tenant, std::move(d), /*owned=*/true);
}

absl::StatusOr<DatasetRecord> CheckpointRegistry::InsertDataset(
    const std::string& tenant, DatasetRecord d, bool owned) {
  if (!IsValidName(d.task)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", d.name,
                     "' needs a task (letters, digits, '.', '_', '-')"));
  }
  if (d.role != DatasetRole::kEval && d.role != DatasetRole::kFisher &&
      d.role != DatasetRole::kAuxiliary && d.role != DatasetRole::kValidation) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", d.name,
                     "' needs a role: eval, validation, fisher or auxiliary"));
  }
  std::error_code ec;
  if (!fs::is_regular_file(d.path, ec)) {
    return absl::NotFoundError(
        absl::StrCat("dataset file ", Abbreviate(d.path, 256), " not found"));
  }
  auto reader = SafetensorsReader::Open(d.path);
  if (!reader.ok()) {
    return absl::Status(
        reader.status().code(),
        absl::StrCat("dataset '", d.name, "': ", reader.status().message()));
  }
  // The file actually opened, symlinks resolved, must obey the same rule.
  const std::string real = (*reader)->file().real_path();
  const FileCheck check =
      owned ? StorageRoots::OwnedFileCheck(fs::path(d.path).parent_path())
            : roots_.ClientFileCheck();
  MS_RETURN_IF_ERROR(check(real));
  const TensorInfo* inputs = (*reader)->Find("inputs");
  const TensorInfo* labels = (*reader)->Find("labels");
  if (inputs == nullptr || inputs->shape.empty() || inputs->shape[0] == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", d.name, "' needs a non-empty 'inputs' tensor"));
  }
  if (!IsMergeable(inputs->dtype) && inputs->dtype != DType::kI64 &&
      inputs->dtype != DType::kI32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", d.name, "': inputs must be float or integer ids"));
  }
  if (labels != nullptr &&
      (labels->shape != std::vector<int64_t>{inputs->shape[0]} ||
       (labels->dtype != DType::kI64 && labels->dtype != DType::kI32))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset '", d.name,
                     "': labels must be one integer per example of inputs"));
  }
  if (labels == nullptr &&
      (d.role == DatasetRole::kEval || d.role == DatasetRole::kValidation)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset '", d.name, "' is for evaluation but has no 'labels'"));
  }
  d.tenant = tenant;
  d.owned = owned;
  d.path = real;
  d.examples = inputs->shape[0];
  d.has_labels = labels != nullptr;
  d.size_bytes = static_cast<int64_t>((*reader)->file().size());
  MS_ASSIGN_OR_RETURN(std::string h, Sha256File(real));
  d.content_digest = "sha256:" + h;
  d.create_time_ms = NowMs();
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        auto existing,
        db_->Query("SELECT 1 FROM datasets WHERE tenant = ? AND name = ?",
                   {tenant, d.name}));
    if (!existing.empty()) {
      return absl::AlreadyExistsError(
          absl::StrCat("dataset '", d.name, "' already exists"));
    }
    return db_->Exec(
        absl::StrCat("INSERT INTO datasets (", kColumns,
                     ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        {tenant, d.name, d.task, static_cast<int64_t>(d.role), d.path,
         d.content_digest, d.examples, static_cast<int64_t>(d.has_labels),
         d.size_bytes, d.create_time_ms, static_cast<int64_t>(owned)});
  }));
  LogEvent("dataset_registered", {{"tenant", tenant},
                                  {"dataset", d.name},
                                  {"task", d.task},
                                  {"role", DatasetRoleName(d.role)},
                                  {"examples", std::to_string(d.examples)}});
  return d;
}

absl::StatusOr<DatasetRecord> CheckpointRegistry::GetDataset(
    const std::string& tenant, const std::string& name) const {
  MS_RETURN_IF_ERROR(CheckName("dataset", name));
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              " FROM datasets WHERE tenant = ? AND name = ?"),
                 {tenant, name}));
  if (rows.empty()) {
    return absl::NotFoundError(absl::StrCat("dataset '", name, "' not found"));
  }
  return FromRow(rows[0]);
}

absl::StatusOr<Page<DatasetRecord>> CheckpointRegistry::ListDatasets(
    const std::string& tenant, const std::string& task,
    std::optional<DatasetRole> role, const PageRequest& page) const {
  int64_t after_time = -1;
  std::string after_name;
  if (!page.token.empty()) {
    MS_ASSIGN_OR_RETURN(auto key, DecodePageToken(page.token, 2));
    after_time = std::strtoll(key[0].c_str(), nullptr, 10);
    after_name = key[1];
  }
  const int64_t limit = page.size > 0 ? page.size : kSqlNoLimit;
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(
          absl::StrCat("SELECT ", kColumns,
                       " FROM datasets WHERE tenant = ? AND (? = '' OR task = "
                       "?) AND (? = 0 OR role = ?) AND (create_time_ms > ? OR "
                       "(create_time_ms = ? AND name > ?)) ORDER BY "
                       "create_time_ms, name LIMIT ?"),
          {tenant, task, task, static_cast<int64_t>(role ? 1 : 0),
           static_cast<int64_t>(role ? static_cast<int>(*role) : 0), after_time,
           after_time, after_name, limit}));
  Page<DatasetRecord> out;
  for (const SqlRow& r : rows) out.items.push_back(FromRow(r));
  if (limit > 0 && static_cast<int64_t>(out.items.size()) == limit) {
    const DatasetRecord& last = out.items.back();
    out.next_token =
        EncodePageToken({std::to_string(last.create_time_ms), last.name});
  }
  return out;
}

absl::Status CheckpointRegistry::DeleteDataset(const std::string& tenant,
                                               const std::string& name) {
  std::string remove;
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(DatasetRecord d, GetDataset(tenant, name));
    MS_RETURN_IF_ERROR(db_->Exec(
        "DELETE FROM datasets WHERE tenant = ? AND name = ?", {tenant, name}));
    // Uploads are DATA/datasets/<name>-<hex>/<file>: the folder is the
    // upload's, and only an upload's files go with the record.
    const fs::path folder = fs::path(d.path).parent_path();
    if (d.owned &&
        folder.parent_path() == fs::path(roots_.data_dir()) / "datasets") {
      remove = folder.string();
    }
    return absl::OkStatus();
  }));
  if (!remove.empty()) {
    std::error_code ec;
    fs::remove_all(remove, ec);
  }
  return absl::OkStatus();
}

absl::StatusOr<TaskBinding> CheckpointRegistry::Binding(
    const std::string& tenant, const std::string& checkpoint) const {
  MS_ASSIGN_OR_RETURN(CheckpointRecord c, Get(tenant, checkpoint, false));
  TaskBinding b;
  b.checkpoint = c.name;
  b.path = c.path;
  b.check = FileCheckFor(c);
  b.task = c.task;
  b.program = c.program;
  b.program_digest = c.program_digest;
  if (!c.task.empty()) {
    MS_ASSIGN_OR_RETURN(auto all, ListDatasets(tenant, c.task, std::nullopt));
    for (DatasetRecord& d : all.items) b.datasets[d.role] = std::move(d);
  }
  return b;
}

}  // namespace mergeserve
