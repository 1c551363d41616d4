#include "mergeserve/registry/checkpoint_registry.h"

#include <chrono>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/store/page_token.h"
#include "mergeserve/store/sqlite_database.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kColumns[] =
    "tenant, name, role, base, base_tenant, path, labels, content_digest, "
    "size_bytes, tensor_count, parameter_count, create_time_ms, tensors, "
    "program, program_digest, task, owned, published";

CheckpointRecord FromRow(const SqlRow& r, bool with_tensors) {
  CheckpointRecord c;
  c.tenant = SqlString(r[0]);
  c.name = SqlString(r[1]);
  c.role = static_cast<CheckpointRole>(SqlInt(r[2]));
  c.base = SqlString(r[3]);
  c.base_tenant = SqlString(r[4]);
  c.path = SqlString(r[5]);
  auto labels = nlohmann::json::parse(SqlString(r[6]), nullptr, false);
  if (labels.is_object()) {
    for (auto it = labels.begin(); it != labels.end(); ++it) {
      if (it.value().is_string()) c.labels[it.key()] = it.value();
    }
  }
  c.content_digest = SqlString(r[7]);
  c.size_bytes = SqlInt(r[8]);
  c.tensor_count = SqlInt(r[9]);
  c.parameter_count = SqlInt(r[10]);
  c.create_time_ms = SqlInt(r[11]);
  c.program = SqlString(r[13]);
  c.program_digest = SqlString(r[14]);
  c.task = SqlString(r[15]);
  c.owned = SqlInt(r[16]) != 0;
  c.published = SqlInt(r[17]) != 0;
  if (with_tensors) {
    auto tensors = nlohmann::json::parse(SqlString(r[12]), nullptr, false);
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

// sha256 over "<file> <sha256>\n" lines of the folder's weight files (the
// shards the folder opened and its index) in name order.
absl::StatusOr<std::string> FolderDigest(const ModelFolder& folder) {
  std::map<std::string, std::string> files;  // name -> path
  for (const auto& shard : folder.shards()) {
    files[fs::path(shard->path()).filename().string()] =
        shard->file().real_path();
  }
  std::string lines;
  for (const auto& [name, path] : files) {
    MS_ASSIGN_OR_RETURN(std::string h, Sha256File(path));
    absl::StrAppend(&lines, name, " ", h, "\n");
  }
  auto index = folder.ReadSideFile("model.safetensors.index.json");
  if (index.ok()) {
    absl::StrAppend(&lines, "model.safetensors.index.json ", Sha256Hex(*index),
                    "\n");
  }
  return "sha256:" + Sha256Hex(lines);
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

bool CheckpointRegistry::IsValidCheckpointName(const std::string& name) {
  // [ORG/]NAME[@REVISION], as the Hub writes model ids.
  const size_t at = name.find('@');
  const std::string id = name.substr(0, at);
  if (at != std::string::npos && !IsValidName(name.substr(at + 1))) {
    return false;
  }
  const size_t slash = id.find('/');
  if (slash == std::string::npos) return IsValidName(id);
  return IsValidName(id.substr(0, slash)) && IsValidName(id.substr(slash + 1));
}

absl::Status CheckpointRegistry::CheckName(const char* what,
                                           const std::string& name) {
  const bool checkpoint = std::string(what) == "checkpoint";
  if (checkpoint ? IsValidCheckpointName(name) : IsValidName(name)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "invalid ", what, " name '", Abbreviate(name),
      "': use 1-128 letters, digits, '.', '_' or '-'",
      checkpoint ? " (or the Hub's ORG/NAME[@REVISION] of such parts)" : ""));
}

absl::StatusOr<std::unique_ptr<CheckpointRegistry>> CheckpointRegistry::Create(
    Options options) {
  std::unique_ptr<CheckpointRegistry> r(new CheckpointRegistry());
  MS_ASSIGN_OR_RETURN(
      r->roots_, StorageRoots::Create(options.data_dir, options.allowed_roots));
  if (options.db != nullptr) {
    r->db_ = options.db;
  } else {
    MS_ASSIGN_OR_RETURN(
        auto db, SqliteDatabase::Open(r->roots_.data_dir() + "/mergeserve.db"));
    r->db_ = std::move(db);
  }
  MS_RETURN_IF_ERROR(r->MigrateSchema());
  return r;
}

FileCheck CheckpointRegistry::FileCheckFor(const CheckpointRecord& c) const {
  return c.owned ? StorageRoots::OwnedFileCheck(c.path)
                 : roots_.ClientFileCheck();
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
  std::string canonical = fs::weakly_canonical(c.program, ec).string();
  if (c.owned) {
    if (!StorageRoots::IsInside(canonical, c.path)) {
      return absl::PermissionDeniedError(
          "an uploaded checkpoint's program must be its own program.pt");
    }
  } else {
    MS_ASSIGN_OR_RETURN(canonical, roots_.CheckClientPath(c.program));
  }
  if (!fs::is_regular_file(canonical, ec)) {
    return absl::NotFoundError(
        absl::StrCat("program ", Abbreviate(c.program, 256), " not found"));
  }
  // TorchScript archives are zip files; anything else is refused now rather
  // than when a merge first runs it.
  char magic[4] = {};
  FILE* f = std::fopen(canonical.c_str(), "rb");
  const size_t got = f ? std::fread(magic, 1, 4, f) : 0;
  if (f) std::fclose(f);
  if (got != 4 || std::string(magic, 4) != std::string("PK\x03\x04", 4)) {
    return absl::InvalidArgumentError(
        absl::StrCat("program ", Abbreviate(c.program, 256),
                     " is not a TorchScript archive (torch.jit.save)"));
  }
  c.program = canonical;
  MS_ASSIGN_OR_RETURN(std::string h, Sha256File(c.program));
  c.program_digest = "sha256:" + h;
  return absl::OkStatus();
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::Register(
    const std::string& tenant, const CheckpointRecord& request) {
  MS_RETURN_IF_ERROR(CheckName("checkpoint", request.name));
  if (request.path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint '", request.name, "' needs a path"));
  }
  CheckpointRecord c = request;
  MS_ASSIGN_OR_RETURN(c.path, roots_.CheckClientPath(request.path));
  return Insert(tenant, std::move(c), /*owned=*/false);
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::RegisterUpload(
    const std::string& tenant, const CheckpointRecord& request) {
  MS_RETURN_IF_ERROR(CheckName("checkpoint", request.name));
  CheckpointRecord c = request;
  std::error_code ec;
  c.path = fs::weakly_canonical(request.path, ec).string();
  if (!StorageRoots::IsInside(c.path, roots_.data_dir() + "/checkpoints")) {
    return absl::InternalError("an upload must be stored in the data dir");
  }
  return Insert(tenant, std::move(c), /*owned=*/true);
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::Insert(
    const std::string& tenant, CheckpointRecord c, bool owned) {
  std::error_code ec;
  if (!fs::is_directory(c.path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "checkpoint folder ", Abbreviate(c.path, 256), " not found"));
  }
  c.tenant = tenant;
  c.owned = owned;
  c.published = false;
  auto folder = ModelFolder::Open(c.path, FileCheckFor(c));
  if (!folder.ok()) {
    return absl::Status(
        folder.status().code(),
        absl::StrCat("checkpoint '", c.name, "': ", folder.status().message()));
  }
  c.base_tenant.clear();
  const std::string base_name = c.base;
  c.base.clear();
  if (!base_name.empty() && (c.role == CheckpointRole::kExpert ||
                             c.role == CheckpointRole::kAuxiliary)) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord base, Get(tenant, base_name, true));
    if (base.role != CheckpointRole::kBase) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint '", base_name, "' is not a base checkpoint"));
    }
    if (c.role == CheckpointRole::kExpert) {
      // The expert must carry every floating tensor of its base.
      for (const TensorMeta& t : base.tensors) {
        const TensorInfo* mine = (*folder)->Find(t.name);
        if (mine == nullptr && IsMergeable(t.dtype)) {
          return absl::InvalidArgumentError(
              absl::StrCat("expert '", c.name, "' lacks tensor '", t.name,
                           "' of its base '", base_name, "'"));
        }
        if (mine != nullptr && mine->shape != t.shape) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor '", t.name, "' of expert '", c.name,
              "' has a different shape than in base '", base_name, "'"));
        }
      }
    }
    c.base = base.name;
    c.base_tenant = base.tenant;
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
  if (!c.task.empty()) MS_RETURN_IF_ERROR(CheckName("task", c.task));
  MS_ASSIGN_OR_RETURN(c.content_digest, FolderDigest(**folder));
  c.create_time_ms = NowMs();
  const nlohmann::json labels(c.labels);
  absl::Status s = db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        auto existing,
        db_->Query("SELECT 1 FROM checkpoints WHERE tenant = ? AND name = ?",
                   {tenant, c.name}));
    if (!existing.empty()) {
      return absl::AlreadyExistsError(
          absl::StrCat("checkpoint '", c.name, "' already exists"));
    }
    return db_->Exec(
        absl::StrCat("INSERT INTO checkpoints (", kColumns,
                     ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                     "?, ?, ?)"),
        {tenant, c.name, static_cast<int64_t>(c.role), c.base, c.base_tenant,
         c.path,
         labels.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
         c.content_digest, c.size_bytes, c.tensor_count, c.parameter_count,
         c.create_time_ms, tensors.dump(), c.program, c.program_digest, c.task,
         static_cast<int64_t>(owned), int64_t{0}});
  });
  MS_RETURN_IF_ERROR(s);
  for (const TensorInfo* t : (*folder)->tensors()) {
    c.tensors.push_back({t->name, t->dtype, t->shape});
  }
  LogEvent("checkpoint_registered", {{"tenant", tenant},
                                     {"checkpoint", c.name},
                                     {"role", RoleName(c.role)},
                                     {"owned", owned ? "true" : "false"},
                                     {"task", c.task},
                                     {"digest", c.content_digest}});
  return c;
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::GetOwn(
    const std::string& tenant, const std::string& name,
    bool with_tensors) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(
          absl::StrCat("SELECT ", kColumns,
                       " FROM checkpoints WHERE tenant = ? AND name = ?"),
          {tenant, name}));
  if (rows.empty()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint '", Abbreviate(name), "' not found"));
  }
  return FromRow(rows[0], with_tensors);
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::Get(
    const std::string& tenant, const std::string& name,
    bool with_tensors) const {
  MS_RETURN_IF_ERROR(CheckName("checkpoint", name));
  // The tenant's own checkpoint shadows a published one of the same name.
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              " FROM checkpoints WHERE name = ? AND (tenant = "
                              "? OR published = 1) ORDER BY tenant = ? DESC, "
                              "tenant LIMIT 1"),
                 {name, tenant, tenant}));
  if (rows.empty()) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint '", name, "' not found"));
  }
  return FromRow(rows[0], with_tensors);
}

absl::StatusOr<Page<CheckpointRecord>> CheckpointRegistry::List(
    const std::string& tenant, std::optional<CheckpointRole> role,
    const std::map<std::string, std::string>& labels,
    const PageRequest& page) const {
  std::string after_name, after_tenant;
  if (!page.token.empty()) {
    MS_ASSIGN_OR_RETURN(auto key, DecodePageToken(page.token, 2));
    after_name = key[0];
    after_tenant = key[1];
  }
  Page<CheckpointRecord> out;
  // Labels are filtered here, so read in batches until the page is full.
  const int64_t batch = page.size > 0 ? std::max<int64_t>(page.size, 64) : 512;
  for (;;) {
    MS_ASSIGN_OR_RETURN(
        auto rows,
        db_->Query(
            absl::StrCat("SELECT ", kColumns,
                         " FROM checkpoints WHERE (tenant = ? OR published = "
                         "1) AND (? = 0 OR role = ?) AND (name > ? OR (name "
                         "= ? AND tenant > ?)) ORDER BY name, tenant LIMIT ?"),
            {tenant, static_cast<int64_t>(role ? 1 : 0),
             static_cast<int64_t>(role ? static_cast<int>(*role) : 0),
             after_name, after_name, after_tenant, batch}));
    for (const SqlRow& r : rows) {
      CheckpointRecord c = FromRow(r, false);
      after_name = c.name;
      after_tenant = c.tenant;
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = c.labels.find(k);
        if (it == c.labels.end() || it->second != v) match = false;
      }
      if (!match) continue;
      out.items.push_back(std::move(c));
      if (page.size > 0 &&
          static_cast<int64_t>(out.items.size()) == page.size) {
        out.next_token = EncodePageToken({after_name, after_tenant});
        return out;
      }
    }
    if (static_cast<int64_t>(rows.size()) < batch) return out;
  }
}

absl::Status CheckpointRegistry::Delete(const std::string& tenant,
                                        const std::string& name, bool admin) {
  MS_RETURN_IF_ERROR(CheckName("checkpoint", name));
  std::string remove;
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, GetOwn(tenant, name, false));
    if (c.published && !admin) {
      return absl::PermissionDeniedError(absl::StrCat(
          "checkpoint '", name,
          "' is published to every tenant; only an admin can delete it"));
    }
    MS_ASSIGN_OR_RETURN(
        auto dependents,
        db_->Query("SELECT tenant, name FROM checkpoints WHERE base_tenant = ? "
                   "AND base = ? ORDER BY tenant = ? DESC, name",
                   {tenant, name, tenant}));
    if (!dependents.empty()) {
      // Name only the caller's own checkpoints; others' stay unnamed.
      std::vector<std::string> names;
      int64_t others = 0;
      for (const auto& r : dependents) {
        if (SqlString(r[0]) == tenant) {
          names.push_back(SqlString(r[1]));
        } else {
          ++others;
        }
      }
      if (others > 0) {
        names.push_back(
            absl::StrCat(others, " checkpoint(s) of other tenants"));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint '", name, "' is the base of ",
                       absl::StrJoin(names, ", "), "; delete those first"));
    }
    MS_RETURN_IF_ERROR(
        db_->Exec("DELETE FROM checkpoints WHERE tenant = ? AND name = ?",
                  {tenant, name}));
    // Only what the server stored for this record goes with it; a folder a
    // client registered from its own storage is never touched.
    if (c.owned &&
        StorageRoots::IsInside(c.path, roots_.data_dir() + "/checkpoints")) {
      remove = c.path;
    }
    return absl::OkStatus();
  }));
  if (!remove.empty()) {
    std::error_code ec;
    fs::remove_all(remove, ec);
  }
  LogEvent("checkpoint_deleted", {{"tenant", tenant}, {"checkpoint", name}});
  return absl::OkStatus();
}

absl::StatusOr<CheckpointRecord> CheckpointRegistry::Publish(
    const std::string& tenant, const std::string& name, bool published) {
  MS_RETURN_IF_ERROR(CheckName("checkpoint", name));
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, GetOwn(tenant, name, false));
    if (published) {
      MS_ASSIGN_OR_RETURN(
          auto clash,
          db_->Query("SELECT tenant FROM checkpoints WHERE name = ? AND "
                     "published = 1 AND tenant != ?",
                     {name, tenant}));
      if (!clash.empty()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "a checkpoint named '", name, "' is already published"));
      }
    }
    return db_->Exec(
        "UPDATE checkpoints SET published = ? WHERE tenant = ? AND name = ?",
        {static_cast<int64_t>(published), tenant, name});
  }));
  LogEvent("checkpoint_published",
           {{"tenant", tenant},
            {"checkpoint", name},
            {"published", published ? "true" : "false"}});
  return GetOwn(tenant, name, false);
}

ModelResolver CheckpointRegistry::Resolver(const std::string& tenant) const {
  return
      [this, tenant](const std::string& ref) -> absl::StatusOr<ModelLocation> {
        auto c = Get(tenant, ref, false);
        if (!c.ok()) {
          return absl::NotFoundError(absl::StrCat(
              "model '", Abbreviate(ref), "' is not a registered checkpoint"));
        }
        return ModelLocation(c->path, FileCheckFor(*c));
      };
}

absl::StatusOr<int64_t> CheckpointRegistry::StoredBytes(
    const std::string& tenant) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT (SELECT COALESCE(SUM(size_bytes), 0) FROM checkpoints "
                 "WHERE tenant = ?1 AND owned = 1) + (SELECT "
                 "COALESCE(SUM(size_bytes), 0) FROM datasets WHERE tenant = ?1 "
                 "AND owned = 1)",
                 {tenant}));
  return rows.empty() ? 0 : SqlInt(rows[0][0]);
}

}  // namespace mergeserve
