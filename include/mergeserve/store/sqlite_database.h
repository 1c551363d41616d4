// A small RAII wrapper over one SQLite database file: statements with bound
// parameters, transactions, errors as absl::Status.
#ifndef MERGESERVE_STORE_SQLITE_DATABASE_H_
#define MERGESERVE_STORE_SQLITE_DATABASE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

struct sqlite3;

namespace mergeserve {

using SqlValue = std::variant<std::nullptr_t, int64_t, double, std::string>;
using SqlRow = std::vector<SqlValue>;

// Column accessors that read NULL or a different type as empty/zero.
inline std::string SqlString(const SqlValue& v) {
  const auto* s = std::get_if<std::string>(&v);
  return s ? *s : std::string();
}
inline int64_t SqlInt(const SqlValue& v) {
  const auto* i = std::get_if<int64_t>(&v);
  return i ? *i : 0;
}
inline double SqlReal(const SqlValue& v) {
  if (const auto* d = std::get_if<double>(&v)) return *d;
  return static_cast<double>(SqlInt(v));
}

// One step of a component's schema: applied once, in order, inside the
// transaction that records its version.
struct Migration {
  int version;
  const char* description;
  std::function<absl::Status()> apply;
};

class SqliteDatabase {
 public:
  // Opens (creating) the file; WAL journal so readers never block writers.
  // A file that is not a database, or fails SQLite's quick integrity check,
  // is DATA_LOSS naming the file.
  static absl::StatusOr<std::unique_ptr<SqliteDatabase>> Open(
      const std::string& path);
  ~SqliteDatabase();
  SqliteDatabase(const SqliteDatabase&) = delete;
  SqliteDatabase& operator=(const SqliteDatabase&) = delete;

  // Runs one statement with `?` parameters; returns the result rows.
  absl::StatusOr<std::vector<SqlRow>> Query(
      const std::string& sql, const std::vector<SqlValue>& args = {});
  absl::Status Exec(const std::string& sql,
                    const std::vector<SqlValue>& args = {});
  // Runs several `;`-separated statements without parameters (schemas).
  absl::Status ExecScript(const std::string& sql);
  // Runs fn inside BEGIN IMMEDIATE / COMMIT, rolling back on error.
  absl::Status Transaction(const std::function<absl::Status()>& fn);
  // Schema upgrades: ALTERs each (name, declaration) column into `table`
  // unless a database written by an earlier release already has it.
  absl::Status AddMissingColumns(
      const std::string& table,
      const std::vector<std::pair<std::string, std::string>>& columns);
  // Rows changed by the last statement.
  int64_t changes() const;
  // Brings `component`'s tables to the newest of `steps` (sorted by
  // version): each step not yet recorded in schema_versions runs under one
  // write lock with the version update, so concurrent openers apply it once.
  // Step 1 of each component creates its tables with IF NOT EXISTS, which
  // also adopts databases written before versions were recorded.
  absl::Status Migrate(const std::string& component,
                       const std::vector<Migration>& steps);
  // The version recorded for a component (0: none yet).
  absl::StatusOr<int> SchemaVersion(const std::string& component);
  const std::string& path() const { return path_; }

 private:
  SqliteDatabase() = default;
  absl::StatusOr<std::vector<SqlRow>> QueryLocked(
      const std::string& sql, const std::vector<SqlValue>& args);
  sqlite3* db_ = nullptr;
  std::string path_;
  std::recursive_mutex mu_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_STORE_SQLITE_DATABASE_H_
