// The shared store: PostgreSQL through libpq. One connection per process,
// re-established when the server restarts or the network drops it between
// statements; several replicas coordinate through it (row locks with SKIP
// LOCKED for job claims, advisory locks for migrations and
// content-addressed inserts).
#ifndef MERGESERVE_STORE_POSTGRES_DATABASE_H_
#define MERGESERVE_STORE_POSTGRES_DATABASE_H_

#include <memory>
#include <mutex>
#include <string>

#include "mergeserve/store/database.h"

struct pg_conn;

namespace mergeserve {

class PostgresDatabase : public Database {
 public:
  static absl::StatusOr<std::unique_ptr<PostgresDatabase>> Open(
      const std::string& url, const DatabaseOpenOptions& options);
  ~PostgresDatabase() override;
  PostgresDatabase(const PostgresDatabase&) = delete;
  PostgresDatabase& operator=(const PostgresDatabase&) = delete;

  using Database::Exec;
  Dialect dialect() const override { return Dialect::kPostgres; }
  std::string Describe() const override { return described_; }
  absl::StatusOr<std::vector<SqlRow>> Query(
      const std::string& sql, const std::vector<SqlValue>& args = {}) override;
  absl::StatusOr<int64_t> ExecCount(
      const std::string& sql, const std::vector<SqlValue>& args = {}) override;
  absl::Status ExecScript(const std::string& sql) override;
  absl::Status Transaction(const std::function<absl::Status()>& fn) override;
  absl::Status LockKey(const std::string& key) override;
  absl::StatusOr<int64_t> ServerNowMs() override;
  absl::Status Notify(const std::string& channel,
                      const std::string& payload) override;
  absl::StatusOr<std::unique_ptr<DatabaseListener>> Listen(
      const std::string& channel) override;
  absl::Status AddMissingColumns(
      const std::string& table,
      const std::vector<std::pair<std::string, std::string>>& columns) override;

  // `?` and `?N` placeholders as PostgreSQL's `$N`, outside quotes.
  static std::string Placeholders(const std::string& sql);

 protected:
  absl::Status WithMigrationLock(
      const std::function<absl::Status()>& fn) override;

 private:
  PostgresDatabase() = default;
  // A new connection with this database's settings.
  absl::StatusOr<pg_conn*> Connect() const;
  absl::Status EnsureConnected();
  absl::StatusOr<std::vector<SqlRow>> Run(const std::string& sql,
                                          const std::vector<SqlValue>& args,
                                          int64_t* changed);
  pg_conn* conn_ = nullptr;
  std::string described_, url_, password_;
  bool has_password_ = false;
  int transaction_depth_ = 0;
  std::recursive_mutex mu_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_STORE_POSTGRES_DATABASE_H_
