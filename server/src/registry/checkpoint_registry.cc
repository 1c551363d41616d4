#include "mergeserve/registry/checkpoint_registry.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/model_folder.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS checkpoints (
  name TEXT PRIMARY KEY,
  role INTEGER NOT NULL,
  base TEXT NOT NULL DEFAULT '',
  path TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  content_digest TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  tensor_count INTEGER NOT NULL,
  parameter_count INTEGER NOT NULL,
  create_time_ms INTEGER NOT NULL,
  tensors TEXT NOT NULL
))sql";

constexpr char kColumns[] =
    "name, role, base, path, labels, content_digest, size_bytes, tensor_count, "
    "parameter_count, create_time_ms, tensors, program, program_digest, task";

CheckpointRecord FromRow(const SqlRow& r, bool with_tensors) {
  CheckpointRecord c;
  c.name = SqlString(r[0]);
  c.role = static_cast<CheckpointRole>(SqlInt(r[1]));
  c.base = SqlString(r[2]);
  c.path = SqlString(r[3]);
  auto labels = nlohmann::json::parse(SqlString(r[4]), nullptr, false);
  if (labels.is_object()) {
    for (auto it = labels.begin(); it != labels.end(); ++it) {
      if (it.value().is_string()) c.labels[it.key()] = it.value();
    }
  }
  c.content_digest = SqlString(r[5]);
  c.size_bytes = SqlInt(r[6]);
  c.tensor_count = SqlInt(r[7]);
  c.parameter_count = SqlInt(r[8]);
  c.create_time_ms = SqlInt(r[9]);
  c.program = SqlString(r[11]);
  c.program_digest = SqlString(r[12]);
  c.task = SqlString(r[13]);
  if (with_tensors) {
    auto tensors = nlohmann::json::parse(SqlString(r[10]), nullptr, false);
    if (tensors.is_array()) {
      for (const auto& t : tensors) {
        auto dtype = DTypeFromName(t.value("dtype", ""));
        c.tensors.push_back({t.value("name", ""), dtype.value_or(DType::kU8),
                             t.value("shape", std::vector<int64_t>{})});
      }
    }
  }
  return c;
}

}  // namespace

std::string RoleName(CheckpointRole role) {
  switch (role) {
    case CheckpointRole::kBase:
      return "base";
    case CheckpointRole::kExpert:
      return "expert";
    case CheckpointRole::kAuxiliary:
      return "auxiliary";
  }
  return "unknown";
}

bool CheckpointRegistry::IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name == "." || name == "..") {
    return false;
  }
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<CheckpointRegistry>> CheckpointRegistry::Create(
    Options options) {
  std::error_code ec;
  fs::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(
        "cannot create data dir ", options.data_dir, ": ", ec.message()));
  }
  std::unique_ptr<CheckpointRegistry> r(new CheckpointRegistry());
  options.data_dir = fs::canonical(options.data_dir).string();
  r->options_ = options;
  r->roots_.push_back(options.data_dir);
  for (const std::string& root : options.allowed_roots) {
    const fs::path canonical = fs::weakly_canonical(root, ec);
    if (ec || !fs::is_directory(canonical, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage root ", root, " is not a folder"));
    }
    r->roots_.push_back(canonical.string());
  }
  MS_ASSIGN_OR_RETURN(
      r->db_, SqliteDatabase::Open(options.data_dir + "/mergeserve.db"));
  MS_RETURN_IF_ERROR(r->db_->Exec(kSchema));
  // Columns added after the first release.
  MS_RETURN_IF_ERROR(r->db_->AddMissingColumns(
      "checkpoints", {{"program", "TEXT NOT NULL DEFAULT ''"},
                      {"program_digest", "TEXT NOT NULL DEFAULT ''"},
                      {"task", "TEXT NOT NULL DEFAULT ''"}}));
  MS_RETURN_IF_ERROR(r->InitDatasets());
  return r;
}

absl::Status CheckpointRegistry::CheckInsideRoots(
    const std::string& canonical) const {
  for (const std::string& root : roots_) {
    const fs::path rel = fs::path(canonical).lexically_relative(root);
    if (!rel.empty() && *rel.begin() != "..") return absl::OkStatus();
  }
  return absl::PermissionDeniedError(
      absl::StrCat("path ", canonical, " is outside the storage roots (",
                   absl::StrJoin(roots_, ", "), ")"));
}

absl::Status CheckpointRegistry::CheckProgram(CheckpointRecord& c) const {
  std::error_code ec;
  if (c.program.empty()) {
    // A folder's own program.pt is attached without asking.
    if (fs::is_regular_file(fs::path(c.path) / "program.pt", ec)) {
      c.program = (fs::path(c.path) / "program.pt").string();
    } else {
      c.program_digest.clear();
      return absl::OkStatus();
    }
  }
  const fs::path canonical = fs::weakly_canonical(c.program, ec);
  MS_RETURN_IF_ERROR(CheckInsideRoots(canonical.string()));
  if (!fs::is_regular_file(canonical, ec)) {
    return absl::NotFoundError(
        absl::StrCat("program ", canonical.string(), " not found"));
  }
  // TorchScript archives are zip files; anything else is refused now rather
  // than when a merge first runs it.
  char magic[4] = {};
  FILE* f = std::fopen(canonical.c_str(), "rb");
  const size_t got = f ? std::fread(magic, 1, 4, f) : 0;
  if (f) std::fclose(f);
  if (got != 4 || std::string(magic, 4) != std::string("PK\x03\x04", 4)) {
    return absl::InvalidArgumentError(
        absl::StrCat("program ", canonical.string(),
                     " is not a TorchScript archive (torch.jit.save)"));
  }
  c.program = canonical.string();
  MS_ASSIGN_OR_RETURN(std::string h, Sha256File(c.program));
  c.program_digest = "sha256:" + h;
  return absl::OkStatus();
}

absl::StatusOr<std::string> CheckpointRegistry::FolderDigest(
    const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && (absl::EndsWith(n, ".safetensors") ||
                                n == "model.safetensors.index.json")) {
      files.push_back(n);
    }
  }
  std::sort(files.begin(), files.end());
  std::string lines;
  for (const std::string& f : files) {
    MS_ASSIGN_OR_RETURN(std::string h, Sha256File(dir + "/" + f));
    absl::StrAppend(&lines, f, " ", h, "\n");
  }
  return "sha256:" + Sha256Hex(lines);
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::Register(
    const CheckpointRecord& request) {
  if (!IsValidName(request.name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid checkpoint name '", request.name,
                     "': use 1-128 letters, digits, '.', '_' or '-'"));
  }
  if (request.path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint '", request.name, "' needs a path"));
  }
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(request.path, ec);
  MS_RETURN_IF_ERROR(CheckInsideRoots(canonical.string()));
  if (!fs::is_directory(canonical, ec)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint folder ", canonical.string(), " not found"));
  }
  auto folder = ModelFolder::Open(canonical.string());
  if (!folder.ok()) {
    return absl::Status(folder.status().code(),
                        absl::StrCat("checkpoint '", request.name,
                                     "': ", folder.status().message()));
  }
  CheckpointRecord c = request;
  c.path = canonical.string();
  c.base.clear();
  if (request.role == CheckpointRole::kExpert ||
      (request.role == CheckpointRole::kAuxiliary && !request.base.empty())) {
    if (request.base.empty() && request.role == CheckpointRole::kExpert) {
      // An expert without a base is allowed (e.g. for linear merges).
    } else {
      MS_ASSIGN_OR_RETURN(CheckpointRecord base, Get(request.base, true));
      if (base.role != CheckpointRole::kBase) {
        return absl::InvalidArgumentError(absl::StrCat(
            "checkpoint '", request.base, "' is not a base checkpoint"));
      }
      if (request.role == CheckpointRole::kExpert) {
        // The expert must carry every floating tensor of its base.
        for (const TensorMeta& t : base.tensors) {
          const TensorInfo* mine = (*folder)->Find(t.name);
          if (mine == nullptr && IsMergeable(t.dtype)) {
            return absl::InvalidArgumentError(
                absl::StrCat("expert '", request.name, "' lacks tensor '",
                             t.name, "' of its base '", request.base, "'"));
          }
          if (mine != nullptr && mine->shape != t.shape) {
            return absl::InvalidArgumentError(absl::StrCat(
                "tensor '", t.name, "' of expert '", request.name,
                "' has a different shape than in base '", request.base, "'"));
          }
        }
      }
      c.base = request.base;
    }
  }
  nlohmann::json tensors = nlohmann::json::array();
  c.tensor_count = 0;
  c.parameter_count = 0;
  for (const TensorInfo* t : (*folder)->tensors()) {
    tensors.push_back({{"name", t->name},
                       {"dtype", std::string(DTypeName(t->dtype))},
                       {"shape", t->shape}});
    ++c.tensor_count;
    c.parameter_count += t->numel();
  }
  c.size_bytes = static_cast<int64_t>((*folder)->total_bytes());
  MS_RETURN_IF_ERROR(CheckProgram(c));
  if (!c.task.empty() && !IsValidName(c.task)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid task name '", c.task, "'"));
  }
  MS_ASSIGN_OR_RETURN(c.content_digest, FolderDigest(c.path));
  c.create_time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  const nlohmann::json labels(c.labels);
  absl::Status s = db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        auto existing,
        db_->Query("SELECT 1 FROM checkpoints WHERE name = ?", {c.name}));
    if (!existing.empty()) {
      return absl::AlreadyExistsError(
          absl::StrCat("checkpoint '", c.name, "' already exists"));
    }
    return db_->Exec(
        absl::StrCat("INSERT INTO checkpoints (", kColumns,
                     ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
        {c.name, static_cast<int64_t>(c.role), c.base, c.path, labels.dump(),
         c.content_digest, c.size_bytes, c.tensor_count, c.parameter_count,
         c.create_time_ms, tensors.dump(), c.program, c.program_digest,
         c.task});
  });
  MS_RETURN_IF_ERROR(s);
  for (const TensorInfo* t : (*folder)->tensors()) {
    c.tensors.push_back({t->name, t->dtype, t->shape});
  }
  LogEvent("checkpoint_registered", {{"checkpoint", c.name},
                                     {"role", RoleName(c.role)},
                                     {"path", c.path},
                                     {"program", c.program},
                                     {"task", c.task},
                                     {"digest", c.content_digest}});
  return c;
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::Get(
    const std::string& name, bool with_tensors) const {
  MS_ASSIGN_OR_RETURN(
      auto rows, db_->Query(absl::StrCat("SELECT ", kColumns,
                                         " FROM checkpoints WHERE name = ?"),
                            {name}));
  if (rows.empty()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint '", name, "' not found"));
  }
  return FromRow(rows[0], with_tensors);
}

absl::StatusOr<std::vector<CheckpointRecord>> CheckpointRegistry::List(
    std::optional<CheckpointRole> role,
    const std::map<std::string, std::string>& labels) const {
  MS_ASSIGN_OR_RETURN(
      auto rows, db_->Query(absl::StrCat("SELECT ", kColumns,
                                         " FROM checkpoints ORDER BY name")));
  std::vector<CheckpointRecord> out;
  for (const SqlRow& r : rows) {
    CheckpointRecord c = FromRow(r, false);
    if (role && c.role != *role) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      auto it = c.labels.find(k);
      if (it == c.labels.end() || it->second != v) match = false;
    }
    if (match) out.push_back(std::move(c));
  }
  return out;
}

absl::Status CheckpointRegistry::Delete(const std::string& name) {
  return db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        auto dependents,
        db_->Query("SELECT name FROM checkpoints WHERE base = ? ORDER BY name",
                   {name}));
    if (!dependents.empty()) {
      std::vector<std::string> names;
      for (const auto& r : dependents) names.push_back(SqlString(r[0]));
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint '", name, "' is the base of ",
                       absl::StrJoin(names, ", "), "; delete those first"));
    }
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, Get(name, false));
    MS_RETURN_IF_ERROR(
        db_->Exec("DELETE FROM checkpoints WHERE name = ?", {name}));
    // Uploaded checkpoints live in the data dir and go with their record;
    // folders registered from a server path are their owner's and stay.
    const fs::path uploads = fs::path(options_.data_dir) / "checkpoints";
    const fs::path rel = fs::path(c.path).lexically_relative(uploads);
    if (!rel.empty() && *rel.begin() != "..") {
      std::error_code ec;
      fs::remove_all(c.path, ec);
    }
    return absl::OkStatus();
  });
}

ModelResolver CheckpointRegistry::Resolver() const {
  return [this](const std::string& ref) -> absl::StatusOr<std::string> {
    auto c = Get(ref, false);
    if (!c.ok()) {
      return absl::NotFoundError(
          absl::StrCat("model '", ref, "' is not a registered checkpoint"));
    }
    return c->path;
  };
}

}  // namespace mergeserve
