#include "mergeserve/store/database.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/store/postgres_database.h"
#include "mergeserve/store/sqlite_database.h"

namespace mergeserve {

absl::StatusOr<int64_t> Database::ServerNowMs() { return NowMs(); }

absl::StatusOr<int> Database::SchemaVersion(const std::string& component) {
  MS_RETURN_IF_ERROR(
      Exec("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT "
           "PRIMARY KEY, version BIGINT NOT NULL)"));
  MS_ASSIGN_OR_RETURN(
      auto rows,
      Query("SELECT version FROM schema_versions WHERE component = ?",
            {component}));
  return rows.empty() ? 0 : static_cast<int>(SqlInt(rows[0][0]));
}

absl::Status Database::Migrate(const std::string& component,
                               const std::vector<Migration>& steps) {
  return WithMigrationLock([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(int current, SchemaVersion(component));
    for (const Migration& step : steps) {
      if (step.version <= current) continue;
      MS_RETURN_IF_ERROR(Transaction([&]() -> absl::Status {
        // Another process may have applied it since we looked.
        MS_ASSIGN_OR_RETURN(int now, SchemaVersion(component));
        if (now >= step.version) return absl::OkStatus();
        absl::Status s = step.apply();
        if (!s.ok()) {
          return absl::Status(
              s.code(),
              absl::StrCat("schema migration ", component, " v", step.version,
                           " (", step.description, "): ", s.message()));
        }
        return Exec(
            "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            {component, static_cast<int64_t>(step.version)});
      }));
      current = step.version;
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::shared_ptr<Database>> OpenDatabase(
    const std::string& url, const DatabaseOpenOptions& options) {
  if (absl::StartsWith(url, "postgresql://") ||
      absl::StartsWith(url, "postgres://")) {
    MS_ASSIGN_OR_RETURN(auto db, PostgresDatabase::Open(url, options));
    return std::shared_ptr<Database>(std::move(db));
  }
  std::string path = url;
  if (absl::StartsWith(url, "sqlite://")) {
    path = url.substr(sizeof("sqlite://") - 1);
  } else if (absl::StrContains(url, "://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--database: '", url.substr(0, url.find("://")),
        "' is not a database this server knows; use sqlite:///path or "
        "postgresql://user@host:port/db"));
  }
  if (path.empty()) {
    return absl::InvalidArgumentError("--database: sqlite:// needs a path");
  }
  MS_ASSIGN_OR_RETURN(auto db, SqliteDatabase::Open(path));
  return std::shared_ptr<Database>(std::move(db));
}

}  // namespace mergeserve
