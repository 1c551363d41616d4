// The server's one store interface: SQL with `?` parameters, transactions,
// versioned migrations. Two implementations share every table and query:
// SQLite (the embedded default, one replica) and PostgreSQL (several
// replicas share it). Queries are written once, in the SQL both accept
// (BIGINT, DOUBLE PRECISION, INSERT ... ON CONFLICT, no LIMIT -1).
#ifndef MERGESERVE_STORE_DATABASE_H_
#define MERGESERVE_STORE_DATABASE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

using SqlValue = std::variant<std::nullptr_t, int64_t, double, std::string>;
using SqlRow = std::vector<SqlValue>;

// "No limit" for `LIMIT ?` in both dialects (PostgreSQL refuses -1).
constexpr int64_t kSqlNoLimit = std::numeric_limits<int64_t>::max();

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

// A connection that waits for notifications on one channel (PostgreSQL
// LISTEN), so replicas learn of new jobs and changes without polling.
class DatabaseListener {
 public:
  virtual ~DatabaseListener() = default;
  // Payloads that arrived, after waiting up to `timeout` for the first.
  // UNAVAILABLE when the connection broke (it reconnects on the next call).
  virtual absl::StatusOr<std::vector<std::string>> Wait(
      std::chrono::milliseconds timeout) = 0;
};

class Database {
 public:
  enum class Dialect { kSqlite, kPostgres };
  virtual ~Database() = default;

  virtual Dialect dialect() const = 0;
  // Where it is, without secrets (for logs and errors).
  virtual std::string Describe() const = 0;

  // Runs one statement with `?` (or `?N`) parameters; returns the rows.
  virtual absl::StatusOr<std::vector<SqlRow>> Query(
      const std::string& sql, const std::vector<SqlValue>& args = {}) = 0;
  absl::Status Exec(const std::string& sql,
                    const std::vector<SqlValue>& args = {}) {
    return Query(sql, args).status();
  }
  // Runs one statement; returns how many rows it changed.
  virtual absl::StatusOr<int64_t> ExecCount(
      const std::string& sql, const std::vector<SqlValue>& args = {}) = 0;
  // Runs several `;`-separated statements without parameters (schemas).
  virtual absl::Status ExecScript(const std::string& sql) = 0;
  // Runs fn in one transaction, rolling back on error. Writers are
  // serialised on SQLite; on PostgreSQL use LockKey for read-then-write.
  virtual absl::Status Transaction(const std::function<absl::Status()>& fn) = 0;
  // Inside Transaction: holds `key` against every process sharing this
  // database until the transaction ends (an advisory lock on PostgreSQL;
  // SQLite's write transaction already excludes everyone).
  virtual absl::Status LockKey(const std::string& key) = 0;
  // The database's clock in ms since the epoch: leases are compared on one
  // clock, whatever the replicas' clocks say (SQLite: this host's).
  virtual absl::StatusOr<int64_t> ServerNowMs();
  // Tells every process listening on `channel` (at commit, inside a
  // transaction). SQLite has no listeners: a no-op, callers poll.
  virtual absl::Status Notify(const std::string& channel,
                              const std::string& payload) {
    (void)channel;
    (void)payload;
    return absl::OkStatus();
  }
  // A dedicated connection listening on `channel`; nullptr where the store
  // cannot notify (SQLite).
  virtual absl::StatusOr<std::unique_ptr<DatabaseListener>> Listen(
      const std::string& channel) {
    (void)channel;
    return std::unique_ptr<DatabaseListener>();
  }
  // Schema upgrades: ALTERs each (name, declaration) column into `table`
  // unless a database written by an earlier release already has it.
  virtual absl::Status AddMissingColumns(
      const std::string& table,
      const std::vector<std::pair<std::string, std::string>>& columns) = 0;

  // Brings `component`'s tables to the newest of `steps` (sorted by
  // version) under a lock every process sharing the database respects: each
  // step not yet recorded in schema_versions runs in one transaction with
  // the version update, so concurrent starters apply it once. Step 1 of
  // each component creates its tables with IF NOT EXISTS, which also adopts
  // databases written before versions were recorded.
  absl::Status Migrate(const std::string& component,
                       const std::vector<Migration>& steps);
  // The version recorded for a component (0: none yet).
  absl::StatusOr<int> SchemaVersion(const std::string& component);

 protected:
  // Runs fn while holding the database-wide migration lock.
  virtual absl::Status WithMigrationLock(
      const std::function<absl::Status()>& fn) = 0;
};

// Opens the database a `--database` URL names:
//   sqlite:///abs/path/mergeserve.db   (or a plain path)
//   postgresql://user@host:port/db     (libpq URI; ?host=/socket/dir works)
// A password may not be part of the URL (command lines show in `ps` and in
// logs): libpq reads $PGPASSWORD or ~/.pgpass, or pass `password_file`.
struct DatabaseOpenOptions {
  std::string password_file;
};
absl::StatusOr<std::shared_ptr<Database>> OpenDatabase(
    const std::string& url, const DatabaseOpenOptions& options = {});

}  // namespace mergeserve

#endif  // MERGESERVE_STORE_DATABASE_H_
