#include "mergeserve/store/sqlite_database.h"

#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

absl::Status SqlError(sqlite3* db, const std::string& what) {
  const int code = db ? (sqlite3_errcode(db) & 0xff) : SQLITE_ERROR;
  const std::string msg =
      absl::StrCat("sqlite: ", what, ": ", db ? sqlite3_errmsg(db) : "no db");
  switch (code) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(msg);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(
          absl::StrCat(msg, " (the server's disk is full)"));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteDatabase>> SqliteDatabase::Open(
    const std::string& path) {
  std::unique_ptr<SqliteDatabase> d(new SqliteDatabase());
  d->path_ = path;
  if (sqlite3_open_v2(
          path.c_str(), &d->db_,
          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
          nullptr) != SQLITE_OK) {
    return SqlError(d->db_, absl::StrCat("cannot open ", path));
  }
  sqlite3_busy_timeout(d->db_, 5000);
  // A corrupt or foreign file must stop the server from claiming to serve:
  // check before anything else touches it.
  auto check = d->Query("PRAGMA quick_check");
  if (!check.ok()) {
    return absl::DataLossError(absl::StrCat("database ", path,
                                            " is unreadable or not a SQLite "
                                            "database: ",
                                            check.status().message()));
  }
  if (check->empty() || SqlString((*check)[0][0]) != "ok") {
    return absl::DataLossError(absl::StrCat(
        "database ", path, " is corrupt (quick_check: ",
        check->empty() ? "no answer" : SqlString((*check)[0][0]), ")"));
  }
  if (auto s = d->Exec("PRAGMA journal_mode=WAL"); !s.ok()) return s;
  if (auto s = d->Exec("PRAGMA synchronous=FULL"); !s.ok()) return s;
  if (auto s = d->Exec("PRAGMA foreign_keys=ON"); !s.ok()) return s;
  return d;
}

SqliteDatabase::~SqliteDatabase() {
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

absl::StatusOr<std::vector<SqlRow>> SqliteDatabase::Query(
    const std::string& sql, const std::vector<SqlValue>& args) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return QueryLocked(sql, args);
}

absl::StatusOr<std::vector<SqlRow>> SqliteDatabase::QueryLocked(
    const std::string& sql, const std::vector<SqlValue>& args) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
    return SqlError(db_, absl::StrCat("prepare '", sql, "'"));
  }
  std::unique_ptr<sqlite3_stmt, int (*)(sqlite3_stmt*)> guard(stmt,
                                                              sqlite3_finalize);
  for (size_t i = 0; i < args.size(); ++i) {
    const int idx = static_cast<int>(i + 1);
    int rc = SQLITE_OK;
    if (std::holds_alternative<std::nullptr_t>(args[i])) {
      rc = sqlite3_bind_null(stmt, idx);
    } else if (const auto* v = std::get_if<int64_t>(&args[i])) {
      rc = sqlite3_bind_int64(stmt, idx, *v);
    } else if (const auto* d = std::get_if<double>(&args[i])) {
      rc = sqlite3_bind_double(stmt, idx, *d);
    } else {
      const auto& s = std::get<std::string>(args[i]);
      rc = sqlite3_bind_text(stmt, idx, s.data(), static_cast<int>(s.size()),
                             SQLITE_TRANSIENT);
    }
    if (rc != SQLITE_OK) return SqlError(db_, "bind");
  }
  std::vector<SqlRow> rows;
  for (;;) {
    const int rc = sqlite3_step(stmt);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW)
      return SqlError(db_, absl::StrCat("step '", sql, "'"));
    SqlRow row;
    for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
      switch (sqlite3_column_type(stmt, c)) {
        case SQLITE_INTEGER:
          row.emplace_back(static_cast<int64_t>(sqlite3_column_int64(stmt, c)));
          break;
        case SQLITE_FLOAT:
          row.emplace_back(sqlite3_column_double(stmt, c));
          break;
        case SQLITE_NULL:
          row.emplace_back(nullptr);
          break;
        default: {
          const auto* text =
              reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
          row.emplace_back(std::string(
              text, static_cast<size_t>(sqlite3_column_bytes(stmt, c))));
        }
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

absl::Status SqliteDatabase::ExecScript(const std::string& sql) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  char* error = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status s = SqlError(db_, "script");
    sqlite3_free(error);
    return s;
  }
  return absl::OkStatus();
}

absl::Status SqliteDatabase::Transaction(
    const std::function<absl::Status()>& fn) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (auto s = QueryLocked("BEGIN IMMEDIATE", {}); !s.ok()) return s.status();
  absl::Status s = fn();
  if (s.ok()) {
    auto c = QueryLocked("COMMIT", {});
    if (c.ok()) return absl::OkStatus();
    s = c.status();
  }
  (void)QueryLocked("ROLLBACK", {});
  return s;
}

absl::StatusOr<int64_t> SqliteDatabase::ExecCount(
    const std::string& sql, const std::vector<SqlValue>& args) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MS_RETURN_IF_ERROR(QueryLocked(sql, args).status());
  return static_cast<int64_t>(sqlite3_changes(db_));
}

absl::Status SqliteDatabase::AddMissingColumns(
    const std::string& table,
    const std::vector<std::pair<std::string, std::string>>& columns) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MS_ASSIGN_OR_RETURN(
      auto present,
      QueryLocked("SELECT name FROM pragma_table_info(?)", {table}));
  for (const auto& [column, declaration] : columns) {
    bool found = false;
    for (const SqlRow& row : present) found |= SqlString(row[0]) == column;
    if (!found) {
      MS_RETURN_IF_ERROR(Exec(absl::StrCat(
          "ALTER TABLE ", table, " ADD COLUMN ", column, " ", declaration)));
    }
  }
  return absl::OkStatus();
}

absl::Status SqliteDatabase::WithMigrationLock(
    const std::function<absl::Status()>& fn) {
  // Each step's BEGIN IMMEDIATE excludes other processes; this excludes
  // the other threads of ours between steps.
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return fn();
}

}  // namespace mergeserve
