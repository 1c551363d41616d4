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

class SqliteDatabase {
 public:
  // Opens (creating) the file; WAL journal so readers never block writers.
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
  // Runs fn inside BEGIN IMMEDIATE / COMMIT, rolling back on error.
  absl::Status Transaction(const std::function<absl::Status()>& fn);
  // Schema upgrades: ALTERs each (name, declaration) column into `table`
  // unless a database written by an earlier release already has it.
  absl::Status AddMissingColumns(
      const std::string& table,
      const std::vector<std::pair<std::string, std::string>>& columns);
  // Rows changed by the last statement.
  int64_t changes() const;

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
