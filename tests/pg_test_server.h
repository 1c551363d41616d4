// A real PostgreSQL for tests: initdb into a fresh temporary folder, started
// with pg_ctl on a Unix socket in that folder (no TCP port to collide on),
// stopped and removed when the object goes. As root, the server runs as the
// `postgres` user (PostgreSQL refuses to run as root).
#ifndef MERGESERVE_TESTS_PG_TEST_SERVER_H_
#define MERGESERVE_TESTS_PG_TEST_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve::testing {

class PgTestServer {
 public:
  // The server of this test binary, started on first use and stopped at
  // exit; an error names what is missing (the postgresql package).
  static absl::StatusOr<PgTestServer*> Shared();
  static absl::StatusOr<std::unique_ptr<PgTestServer>> Start();
  ~PgTestServer();

  // Creates a fresh database; returns its libpq URL.
  absl::StatusOr<std::string> CreateDatabase(const std::string& name);
  // Runs SQL through psql against `db` (for what the server must not do).
  absl::Status Psql(const std::string& db, const std::string& sql);
  const std::string& socket_dir() const { return dir_; }
  int port() const { return port_; }

 private:
  PgTestServer() = default;
  std::string Run(const std::string& command) const;  // as the server user
  std::string dir_, bin_;
  int port_ = 0;
  bool as_postgres_ = false;
  bool started_ = false;
};

}  // namespace mergeserve::testing

#endif  // MERGESERVE_TESTS_PG_TEST_SERVER_H_
