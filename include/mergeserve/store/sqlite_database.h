// The embedded store: one SQLite file, one connection per process.
#ifndef MERGESERVE_STORE_SQLITE_DATABASE_H_
#define MERGESERVE_STORE_SQLITE_DATABASE_H_

#include <memory>
#include <mutex>
#include <string>

#include "mergeserve/store/database.h"

struct sqlite3;

namespace mergeserve {

class SqliteDatabase : public Database {
 public:
  // Opens (creating) the file; WAL journal so readers never block writers.
  // A file that is not a database, or fails SQLite's quick integrity check,
  // is DATA_LOSS naming the file.
  static absl::StatusOr<std::unique_ptr<SqliteDatabase>> Open(
      const std::string& path);
  ~SqliteDatabase() override;
  SqliteDatabase(const SqliteDatabase&) = delete;
  SqliteDatabase& operator=(const SqliteDatabase&) = delete;

  using Database::Exec;
  Dialect dialect() const override { return Dialect::kSqlite; }
  std::string Describe() const override { return "sqlite://" + path_; }
  absl::StatusOr<std::vector<SqlRow>> Query(
      const std::string& sql, const std::vector<SqlValue>& args = {}) override;
  absl::StatusOr<int64_t> ExecCount(
      const std::string& sql, const std::vector<SqlValue>& args = {}) override;
  absl::Status ExecScript(const std::string& sql) override;
  absl::Status Transaction(const std::function<absl::Status()>& fn) override;
  absl::Status LockKey(const std::string&) override { return absl::OkStatus(); }
  absl::Status AddMissingColumns(
      const std::string& table,
      const std::vector<std::pair<std::string, std::string>>& columns) override;
  const std::string& path() const { return path_; }

 protected:
  absl::Status WithMigrationLock(
      const std::function<absl::Status()>& fn) override;

 private:
  SqliteDatabase() = default;
  absl::StatusOr<std::vector<SqlRow>> QueryLocked(
      const std::string& sql, const std::vector<SqlValue>& args);
  sqlite3* db_ = nullptr;
  std::string path_;
  // One connection: statements and transactions of all threads take turns.
  std::recursive_mutex mu_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_STORE_SQLITE_DATABASE_H_
