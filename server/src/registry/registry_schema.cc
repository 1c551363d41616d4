// The registry's tables and their versions. v1 is the schema of the
// releases before tenants (created with IF NOT EXISTS, so it also adopts
// their databases); v2 keys checkpoints and datasets by (tenant, name) and
// records which folders the server stored itself.
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "mergeserve/auth/principal.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kV1[] = R"sql(
CREATE TABLE IF NOT EXISTS checkpoints (
  name TEXT PRIMARY KEY,
  role BIGINT NOT NULL,
  base TEXT NOT NULL DEFAULT '',
  path TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  content_digest TEXT NOT NULL,
  size_bytes BIGINT NOT NULL,
  tensor_count BIGINT NOT NULL,
  parameter_count BIGINT NOT NULL,
  create_time_ms BIGINT NOT NULL,
  tensors TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
  name TEXT PRIMARY KEY,
  task TEXT NOT NULL,
  role BIGINT NOT NULL,
  path TEXT NOT NULL,
  content_digest TEXT NOT NULL,
  examples BIGINT NOT NULL,
  has_labels BIGINT NOT NULL,
  size_bytes BIGINT NOT NULL,
  create_time_ms BIGINT NOT NULL
))sql";

constexpr char kV2[] = R"sql(
CREATE TABLE checkpoints_v2 (
  tenant TEXT NOT NULL,
  name TEXT NOT NULL,
  role BIGINT NOT NULL,
  base TEXT NOT NULL DEFAULT '',
  base_tenant TEXT NOT NULL DEFAULT '',
  path TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  content_digest TEXT NOT NULL,
  size_bytes BIGINT NOT NULL,
  tensor_count BIGINT NOT NULL,
  parameter_count BIGINT NOT NULL,
  create_time_ms BIGINT NOT NULL,
  tensors TEXT NOT NULL,
  program TEXT NOT NULL DEFAULT '',
  program_digest TEXT NOT NULL DEFAULT '',
  task TEXT NOT NULL DEFAULT '',
  owned BIGINT NOT NULL DEFAULT 0,
  published BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, name)
);
INSERT INTO checkpoints_v2 (tenant, name, role, base, base_tenant, path,
  labels, content_digest, size_bytes, tensor_count, parameter_count,
  create_time_ms, tensors, program, program_digest, task)
SELECT ?1, name, role, base, CASE WHEN base = '' THEN '' ELSE ?1 END, path,
  labels, content_digest, size_bytes, tensor_count, parameter_count,
  create_time_ms, tensors, program, program_digest, task FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_v2 RENAME TO checkpoints;
CREATE INDEX checkpoints_by_name ON checkpoints (name, tenant);
CREATE INDEX checkpoints_by_base ON checkpoints (base_tenant, base);
CREATE TABLE datasets_v2 (
  tenant TEXT NOT NULL,
  name TEXT NOT NULL,
  task TEXT NOT NULL,
  role BIGINT NOT NULL,
  path TEXT NOT NULL,
  content_digest TEXT NOT NULL,
  examples BIGINT NOT NULL,
  has_labels BIGINT NOT NULL,
  size_bytes BIGINT NOT NULL,
  create_time_ms BIGINT NOT NULL,
  owned BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, name)
);
INSERT INTO datasets_v2 (tenant, name, task, role, path, content_digest,
  examples, has_labels, size_bytes, create_time_ms)
SELECT ?1, name, task, role, path, content_digest, examples, has_labels,
  size_bytes, create_time_ms FROM datasets;
DROP TABLE datasets;
ALTER TABLE datasets_v2 RENAME TO datasets;
)sql";

}  // namespace

absl::Status CheckpointRegistry::MigrateSchema() {
  Database* db = db_.get();
  const std::string data_dir = roots_.data_dir();
  return db->Migrate(
      "registry",
      {{1, "checkpoints and datasets",
        [db] {
          MS_RETURN_IF_ERROR(db->ExecScript(kV1));
          // Columns the data-aware release added.
          return db->AddMissingColumns(
              "checkpoints", {{"program", "TEXT NOT NULL DEFAULT ''"},
                              {"program_digest", "TEXT NOT NULL DEFAULT ''"},
                              {"task", "TEXT NOT NULL DEFAULT ''"}});
        }},
       {2, "tenants and ownership", [db, data_dir]() -> absl::Status {
          // Rows of the releases before tenants belong to the default one.
          std::string script = kV2;
          for (size_t at; (at = script.find("?1")) != std::string::npos;) {
            script.replace(at, 2, absl::StrCat("'", kDefaultTenant, "'"));
          }
          MS_RETURN_IF_ERROR(db->ExecScript(script));
          // Earlier releases stored uploads as DATA/checkpoints/<name>-<hex>
          // and DATA/datasets/<name>-<hex>/<file> but did not record it. A
          // record owns such a folder only when the folder carries its name
          // and no other record points there (an alias registered onto
          // another upload must not inherit the right to delete it).
          MS_ASSIGN_OR_RETURN(
              auto rows,
              db->Query("SELECT name, path, (SELECT COUNT(*) FROM checkpoints "
                        "c2 WHERE c2.path = c.path) FROM checkpoints c"));
          for (const SqlRow& r : rows) {
            const std::string name = SqlString(r[0]);
            const fs::path path(SqlString(r[1]));
            if (SqlInt(r[2]) == 1 &&
                path.parent_path() == fs::path(data_dir) / "checkpoints" &&
                absl::StartsWith(path.filename().string(), name + "-")) {
              MS_RETURN_IF_ERROR(db->Exec(
                  "UPDATE checkpoints SET owned = 1 WHERE name = ?", {name}));
            }
          }
          MS_ASSIGN_OR_RETURN(
              rows,
              db->Query("SELECT name, path, (SELECT COUNT(*) FROM datasets "
                        "d2 WHERE d2.path = d.path) FROM datasets d"));
          for (const SqlRow& r : rows) {
            const std::string name = SqlString(r[0]);
            const fs::path path(SqlString(r[1]));
            if (SqlInt(r[2]) == 1 &&
                path.parent_path().parent_path() ==
                    fs::path(data_dir) / "datasets" &&
                absl::StartsWith(path.parent_path().filename().string(),
                                 name + "-")) {
              MS_RETURN_IF_ERROR(db->Exec(
                  "UPDATE datasets SET owned = 1 WHERE name = ?", {name}));
            }
          }
          return absl::OkStatus();
        }}});
}

}  // namespace mergeserve
