#include "mergeserve/store/postgres_database.h"

#include <libpq-fe.h>
#include <sys/select.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

// Type OIDs (pg_type.h) of the columns we read back as numbers.
constexpr Oid kBool = 16, kInt8 = 20, kInt2 = 21, kInt4 = 23, kFloat4 = 700,
              kFloat8 = 701, kNumeric = 1700;
// Arbitrary constant naming the migration lock in pg_advisory_lock.
constexpr int64_t kMigrationLock = 0x6d65726765;  // "merge"

absl::Status PgError(const char* sqlstate, const std::string& what) {
  const std::string state = sqlstate ? sqlstate : "";
  const std::string msg = absl::StrCat("postgresql: ", what);
  // SQLSTATE classes: 08 connection, 53 resources, 57 operator
  // intervention, 40 transaction rollback, 23 integrity, XX internal.
  if (state.empty() || absl::StartsWith(state, "08") ||
      absl::StartsWith(state, "57") || state == "53300") {
    return absl::UnavailableError(msg);
  }
  if (state == "53100") {
    return absl::ResourceExhaustedError(
        absl::StrCat(msg, " (the database's disk is full)"));
  }
  if (absl::StartsWith(state, "40")) return absl::AbortedError(msg);
  if (state == "23505") return absl::AlreadyExistsError(msg);
  if (state == "XX001" || state == "XX002") return absl::DataLossError(msg);
  return absl::InternalError(msg);
}

bool IsRead(const std::string& sql) {
  size_t i = 0;
  while (i < sql.size() && absl::ascii_isspace(sql[i])) ++i;
  return absl::StartsWithIgnoreCase(absl::string_view(sql).substr(i),
                                    "SELECT ");
}

std::string Trimmed(const char* s) {
  return std::string(absl::StripAsciiWhitespace(s ? s : ""));
}

}  // namespace

std::string PostgresDatabase::Placeholders(const std::string& sql) {
  std::string out;
  out.reserve(sql.size() + 16);
  int next = 1;
  char quote = 0;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (quote) {
      out += c;
      if (c == quote) quote = 0;
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
      out += c;
      continue;
    }
    if (c != '?') {
      out += c;
      continue;
    }
    size_t j = i + 1;
    while (j < sql.size() && absl::ascii_isdigit(sql[j])) ++j;
    if (j > i + 1) {
      out += "$" + sql.substr(i + 1, j - i - 1);
      i = j - 1;
    } else {
      out += "$" + std::to_string(next++);
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PostgresDatabase>> PostgresDatabase::Open(
    const std::string& url, const DatabaseOpenOptions& options) {
  char* error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &error);
  if (parsed == nullptr) {
    std::string why = error ? Trimmed(error) : "cannot parse";
    PQfreemem(error);
    return absl::InvalidArgumentError(
        absl::StrCat("--database: not a PostgreSQL URL: ", why));
  }
  std::string user, host, port, dbname, password;
  for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string k = o->keyword;
    if (k == "user") user = o->val;
    if (k == "host") host = o->val;
    if (k == "port") port = o->val;
    if (k == "dbname") dbname = o->val;
    if (k == "password") password = o->val;
  }
  PQconninfoFree(parsed);
  if (!password.empty()) {
    return absl::InvalidArgumentError(
        "--database: the URL holds a password; command lines show in `ps` "
        "and in logs, so pass it in $PGPASSWORD, ~/.pgpass or "
        "--database-password-file instead");
  }
  std::unique_ptr<PostgresDatabase> d(new PostgresDatabase());
  d->described_ = absl::StrCat("postgresql://", user.empty() ? "" : user + "@",
                               host.empty() ? "localhost" : host,
                               port.empty() ? "" : ":" + port, "/", dbname);
  d->url_ = url;
  if (!options.password_file.empty()) {
    std::ifstream in(options.password_file);
    if (!in) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--database-password-file: cannot read ", options.password_file));
    }
    std::getline(in, d->password_);
    d->has_password_ = true;
  }
  MS_ASSIGN_OR_RETURN(d->conn_, d->Connect());
  // Quiet the NOTICEs IF NOT EXISTS would print on stderr.
  MS_RETURN_IF_ERROR(d->Exec("SET client_min_messages = warning"));
  return d;
}

absl::StatusOr<pg_conn*> PostgresDatabase::Connect() const {
  std::vector<const char*> keys = {"dbname", "application_name",
                                   "connect_timeout"};
  std::vector<const char*> values = {url_.c_str(), "mergeserve", "10"};
  if (has_password_) {
    keys.push_back("password");
    values.push_back(password_.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  // expand_dbname=1: the URL in "dbname" supplies every other setting.
  pg_conn* conn = PQconnectdbParams(keys.data(), values.data(), 1);
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    absl::Status s = absl::UnavailableError(
        absl::StrCat("cannot connect to ", described_, ": ",
                     conn ? Trimmed(PQerrorMessage(conn)) : "no memory"));
    if (conn != nullptr) PQfinish(conn);
    return s;
  }
  return conn;
}

PostgresDatabase::~PostgresDatabase() {
  if (conn_ != nullptr) PQfinish(conn_);
}

absl::Status PostgresDatabase::EnsureConnected() {
  if (PQstatus(conn_) == CONNECTION_OK) return absl::OkStatus();
  // Inside a transaction a lost connection lost the transaction too.
  if (transaction_depth_ > 0) {
    return absl::UnavailableError(
        absl::StrCat("lost the connection to ", described_));
  }
  PQreset(conn_);
  if (PQstatus(conn_) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat("cannot reconnect to ",
                                               described_, ": ",
                                               Trimmed(PQerrorMessage(conn_))));
  }
  PQclear(PQexec(conn_, "SET client_min_messages = warning"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SqlRow>> PostgresDatabase::Run(
    const std::string& sql, const std::vector<SqlValue>& args,
    int64_t* changed) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const std::string text = Placeholders(sql);
  std::vector<std::string> storage(args.size());
  std::vector<const char*> values(args.size(), nullptr);
  for (size_t i = 0; i < args.size(); ++i) {
    if (const auto* v = std::get_if<int64_t>(&args[i])) {
      storage[i] = std::to_string(*v);
    } else if (const auto* r = std::get_if<double>(&args[i])) {
      storage[i] = absl::StrFormat("%.17g", *r);
    } else if (const auto* s = std::get_if<std::string>(&args[i])) {
      storage[i] = *s;
    } else {
      continue;  // NULL
    }
    values[i] = storage[i].c_str();
  }
  for (int attempt = 0;; ++attempt) {
    MS_RETURN_IF_ERROR(EnsureConnected());
    PGresult* res =
        PQexecParams(conn_, text.c_str(), static_cast<int>(args.size()),
                     nullptr, values.data(), nullptr, nullptr, 0);
    std::unique_ptr<PGresult, void (*)(PGresult*)> guard(res, PQclear);
    const ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      // A connection that dropped between statements is re-established
      // and a read sent again, outside transactions. A write is not: the
      // server may have run it before the connection broke, so the caller
      // gets UNAVAILABLE and decides.
      if (PQstatus(conn_) != CONNECTION_OK && transaction_depth_ == 0 &&
          attempt == 0 && IsRead(sql)) {
        continue;
      }
      const char* state =
          res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
      return PgError(state, absl::StrCat(Trimmed(PQerrorMessage(conn_)),
                                         " (in '", sql.substr(0, 120), "')"));
    }
    if (changed != nullptr) {
      int64_t n = 0;
      (void)absl::SimpleAtoi(PQcmdTuples(res), &n);
      *changed = n;
    }
    std::vector<SqlRow> rows;
    const int nrows = PQntuples(res), ncols = PQnfields(res);
    rows.reserve(nrows);
    for (int r = 0; r < nrows; ++r) {
      SqlRow row;
      row.reserve(ncols);
      for (int c = 0; c < ncols; ++c) {
        if (PQgetisnull(res, r, c)) {
          row.emplace_back(nullptr);
          continue;
        }
        const char* v = PQgetvalue(res, r, c);
        const Oid type = PQftype(res, c);
        int64_t i = 0;
        double d = 0;
        if (type == kInt8 || type == kInt4 || type == kInt2) {
          (void)absl::SimpleAtoi(v, &i);
          row.emplace_back(i);
        } else if (type == kBool) {
          row.emplace_back(int64_t{v[0] == 't' ? 1 : 0});
        } else if (type == kNumeric && absl::SimpleAtoi(v, &i)) {
          row.emplace_back(i);  // SUM(bigint) is numeric
        } else if (type == kFloat4 || type == kFloat8 || type == kNumeric) {
          (void)absl::SimpleAtod(v, &d);
          row.emplace_back(d);
        } else {
          row.emplace_back(
              std::string(v, static_cast<size_t>(PQgetlength(res, r, c))));
        }
      }
      rows.push_back(std::move(row));
    }
    return rows;
  }
}

absl::StatusOr<std::vector<SqlRow>> PostgresDatabase::Query(
    const std::string& sql, const std::vector<SqlValue>& args) {
  return Run(sql, args, nullptr);
}

absl::StatusOr<int64_t> PostgresDatabase::ExecCount(
    const std::string& sql, const std::vector<SqlValue>& args) {
  int64_t changed = 0;
  MS_RETURN_IF_ERROR(Run(sql, args, &changed).status());
  return changed;
}

absl::Status PostgresDatabase::ExecScript(const std::string& sql) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MS_RETURN_IF_ERROR(EnsureConnected());
  PGresult* res = PQexec(conn_, sql.c_str());
  std::unique_ptr<PGresult, void (*)(PGresult*)> guard(res, PQclear);
  const ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return PgError(res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr,
                   absl::StrCat("script: ", Trimmed(PQerrorMessage(conn_))));
  }
  return absl::OkStatus();
}

absl::Status PostgresDatabase::Transaction(
    const std::function<absl::Status()>& fn) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  // PostgreSQL would take an inner BEGIN as a warning and commit the outer
  // transaction at the inner COMMIT; SQLite refuses. Refuse here too.
  if (transaction_depth_ > 0) {
    return absl::FailedPreconditionError(
        "postgresql: nested transactions are not supported");
  }
  MS_RETURN_IF_ERROR(Exec("BEGIN"));
  ++transaction_depth_;
  absl::Status s = fn();
  if (s.ok()) {
    s = Exec("COMMIT");
  } else {
    (void)Exec("ROLLBACK");
  }
  --transaction_depth_;
  if (!s.ok() && PQtransactionStatus(conn_) != PQTRANS_IDLE) {
    (void)Exec("ROLLBACK");
  }
  return s;
}

absl::StatusOr<int64_t> PostgresDatabase::ServerNowMs() {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      Query("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"));
  if (rows.empty()) return absl::InternalError("postgresql: no clock");
  return SqlInt(rows[0][0]);
}

absl::Status PostgresDatabase::LockKey(const std::string& key) {
  return Exec("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", {key});
}

absl::Status PostgresDatabase::Notify(const std::string& channel,
                                      const std::string& payload) {
  return Exec("SELECT pg_notify(?, ?)", {channel, payload});
}

namespace {

class PgListener : public DatabaseListener {
 public:
  PgListener(pg_conn* conn, std::string channel)
      : conn_(conn), channel_(std::move(channel)) {}
  ~PgListener() override { PQfinish(conn_); }

  absl::Status Subscribe() {
    // Channel names are identifiers: ours are fixed lowercase words.
    PGresult* r = PQexec(conn_, ("LISTEN " + channel_).c_str());
    const bool ok = r != nullptr && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
      return absl::UnavailableError(
          absl::StrCat("postgresql: LISTEN ", channel_, ": ",
                       Trimmed(PQerrorMessage(conn_))));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> Wait(
      std::chrono::milliseconds timeout) override {
    std::vector<std::string> out;
    if (PQstatus(conn_) != CONNECTION_OK) {
      PQreset(conn_);
      if (PQstatus(conn_) != CONNECTION_OK) {
        std::this_thread::sleep_for(timeout);
        return absl::UnavailableError("postgresql: listener disconnected");
      }
      MS_RETURN_IF_ERROR(Subscribe());
    }
    Drain(&out);
    if (!out.empty()) return out;
    const int fd = PQsocket(conn_);
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fd, &set);
    timeval tv{static_cast<time_t>(timeout.count() / 1000),
               static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    if (::select(fd + 1, &set, nullptr, nullptr, &tv) > 0) {
      if (PQconsumeInput(conn_) == 0) {
        return absl::UnavailableError(absl::StrCat(
            "postgresql: listener: ", Trimmed(PQerrorMessage(conn_))));
      }
      Drain(&out);
    }
    return out;
  }

 private:
  void Drain(std::vector<std::string>* out) {
    PQconsumeInput(conn_);
    while (PGnotify* n = PQnotifies(conn_)) {
      out->push_back(n->extra ? n->extra : "");
      PQfreemem(n);
    }
  }
  pg_conn* conn_;
  std::string channel_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DatabaseListener>> PostgresDatabase::Listen(
    const std::string& channel) {
  MS_ASSIGN_OR_RETURN(pg_conn * conn, Connect());
  auto listener = std::make_unique<PgListener>(conn, channel);
  MS_RETURN_IF_ERROR(listener->Subscribe());
  return std::unique_ptr<DatabaseListener>(std::move(listener));
}

absl::Status PostgresDatabase::AddMissingColumns(
    const std::string& table,
    const std::vector<std::pair<std::string, std::string>>& columns) {
  for (const auto& [column, declaration] : columns) {
    MS_RETURN_IF_ERROR(
        Exec(absl::StrCat("ALTER TABLE ", table, " ADD COLUMN IF NOT EXISTS ",
                          column, " ", declaration)));
  }
  return absl::OkStatus();
}

absl::Status PostgresDatabase::WithMigrationLock(
    const std::function<absl::Status()>& fn) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  // Session-level: replicas starting together wait here, and the first
  // applies each step.
  MS_RETURN_IF_ERROR(Exec("SELECT pg_advisory_lock(?)", {kMigrationLock}));
  absl::Status s = fn();
  (void)Exec("SELECT pg_advisory_unlock(?)", {kMigrationLock});
  return s;
}

}  // namespace mergeserve
