#include "mergeserve/jobs/job_store.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "mergeserve/auth/principal.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/store/page_token.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

// Summaries leave out the request text (config_yaml).
constexpr char kSummaryColumns[] =
    "tenant, id, state, '' AS config_yaml, request_digest, create_ms, "
    "start_ms, end_ms, tensors_done, tensors_total, error_code, "
    "error_message, files, result_bytes, seconds, result_dir, metrics, "
    "method, replica, attempt, lease_until_ms, cancel_requested, phase, "
    "phase_done, phase_total, bytes_read, kind, '' AS result, '' AS params, "
    "events";
constexpr char kColumns[] =
    "tenant, id, state, config_yaml, request_digest, create_ms, start_ms, "
    "end_ms, tensors_done, tensors_total, error_code, error_message, files, "
    "result_bytes, seconds, result_dir, metrics, method, replica, attempt, "
    "lease_until_ms, cancel_requested, phase, phase_done, phase_total, "
    "bytes_read, kind, result, params, events";
constexpr int kColumnCount = 30;

int64_t Int(JobState s) { return static_cast<int64_t>(s); }

std::string FilesJson(const JobRecord& r) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : r.files) {
    files.push_back(
        {{"name", f.name}, {"size", f.size_bytes}, {"sha256", f.sha256}});
  }
  return files.dump();
}

JobRecord FromRow(const SqlRow& r) {
  JobRecord j;
  j.tenant = SqlString(r[0]);
  j.id = SqlString(r[1]);
  j.state = static_cast<JobState>(SqlInt(r[2]));
  j.config_yaml = SqlString(r[3]);
  j.request_digest = SqlString(r[4]);
  j.create_ms = SqlInt(r[5]);
  j.start_ms = SqlInt(r[6]);
  j.end_ms = SqlInt(r[7]);
  j.tensors_done = SqlInt(r[8]);
  j.tensors_total = SqlInt(r[9]);
  j.error_code = static_cast<int>(SqlInt(r[10]));
  j.error_message = SqlString(r[11]);
  auto files = nlohmann::json::parse(SqlString(r[12]), nullptr, false);
  if (files.is_array()) {
    for (const auto& f : files) {
      j.files.push_back({f.value("name", ""), f.value("size", int64_t{0}),
                         f.value("sha256", "")});
    }
  }
  j.result_bytes = SqlInt(r[13]);
  j.seconds = SqlReal(r[14]);
  j.result_dir = SqlString(r[15]);
  auto metrics = nlohmann::json::parse(SqlString(r[16]), nullptr, false);
  if (metrics.is_object()) {
    for (auto it = metrics.begin(); it != metrics.end(); ++it) {
      if (it.value().is_number()) j.metrics[it.key()] = it.value();
    }
  }
  j.method = SqlString(r[17]);
  j.replica = SqlString(r[18]);
  j.attempt = static_cast<int>(SqlInt(r[19]));
  j.lease_until_ms = SqlInt(r[20]);
  j.cancel_requested = SqlInt(r[21]) != 0;
  j.phase = SqlString(r[22]);
  j.phase_done = SqlInt(r[23]);
  j.phase_total = SqlInt(r[24]);
  j.bytes_read = SqlInt(r[25]);
  j.kind = SqlString(r[26]);
  j.result = SqlString(r[27]);
  j.params = SqlString(r[28]);
  j.events = SqlInt(r[29]);
  return j;
}

// Replicas listening (PostgreSQL) hear of queue and job changes at once.
constexpr char kChannel[] = "mergeserve_jobs";

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(
      absl::StrCat("job '", Abbreviate(id), "' not found"));
}

}  // namespace

bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed ||
         s == JobState::kCancelled;
}

JobRecord Shown(JobRecord r) {
  if (r.state == JobState::kRunning && r.start_ms == 0) {
    r.state = JobState::kQueued;
  }
  return r;
}

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kSucceeded:
      return "SUCCEEDED";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kCancelled:
      return "CANCELLED";
  }
  return "UNKNOWN";
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    std::shared_ptr<Database> db) {
  std::unique_ptr<JobStore> s(new JobStore());
  s->db_ = std::move(db);
  Database* d = s->db_.get();
  MS_RETURN_IF_ERROR(d->Migrate(
      "jobs",
      {{1, "jobs",
        [d] {
          MS_RETURN_IF_ERROR(d->Exec(R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  state BIGINT NOT NULL,
  config_yaml TEXT NOT NULL,
  request_digest TEXT NOT NULL,
  create_ms BIGINT NOT NULL,
  start_ms BIGINT NOT NULL DEFAULT 0,
  end_ms BIGINT NOT NULL DEFAULT 0,
  tensors_done BIGINT NOT NULL DEFAULT 0,
  tensors_total BIGINT NOT NULL DEFAULT 0,
  error_code BIGINT NOT NULL DEFAULT 0,
  error_message TEXT NOT NULL DEFAULT '',
  files TEXT NOT NULL DEFAULT '[]',
  result_bytes BIGINT NOT NULL DEFAULT 0,
  seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
  result_dir TEXT NOT NULL DEFAULT ''
))sql"));
          return d->AddMissingColumns(
              "jobs", {{"metrics", "TEXT NOT NULL DEFAULT '{}'"}});
        }},
       {2, "tenants",
        [d] {
          MS_RETURN_IF_ERROR(d->AddMissingColumns(
              "jobs", {{"tenant", absl::StrCat("TEXT NOT NULL DEFAULT '",
                                               kDefaultTenant, "'")},
                       {"method", "TEXT NOT NULL DEFAULT ''"}}));
          return d->ExecScript(
              "CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, "
              "create_ms, id);"
              "CREATE INDEX IF NOT EXISTS jobs_by_digest ON jobs (tenant, "
              "request_digest);"
              "CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (end_ms);");
        }},
       {3, "replicas and leases",
        [d] {
          MS_RETURN_IF_ERROR(d->AddMissingColumns(
              "jobs", {{"replica", "TEXT NOT NULL DEFAULT ''"},
                       {"attempt", "BIGINT NOT NULL DEFAULT 0"},
                       {"lease_until_ms", "BIGINT NOT NULL DEFAULT 0"},
                       {"cancel_requested", "BIGINT NOT NULL DEFAULT 0"},
                       {"phase", "TEXT NOT NULL DEFAULT ''"},
                       {"phase_done", "BIGINT NOT NULL DEFAULT 0"},
                       {"phase_total", "BIGINT NOT NULL DEFAULT 0"},
                       {"bytes_read", "BIGINT NOT NULL DEFAULT 0"},
                       {"kind", "TEXT NOT NULL DEFAULT 'merge'"},
                       {"result", "TEXT NOT NULL DEFAULT ''"}}));
          // Jobs of the releases before leases that were running when the
          // server stopped were failed at the next start; the queue index
          // serves claims.
          return d->ExecScript(
              "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, "
              "create_ms, id);"
              "CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, "
              "start_ms BIGINT NOT NULL, seen_ms BIGINT NOT NULL);");
        }},
       {4, "sweeps and evaluations as jobs", [d] {
          // A job's parameters beyond its merge config, and its event log
          // (sweep points, evaluated tasks) that streams on any replica
          // replay and follow; `events` is the log's last sequence number.
          MS_RETURN_IF_ERROR(d->AddMissingColumns(
              "jobs", {{"params", "TEXT NOT NULL DEFAULT ''"},
                       {"events", "BIGINT NOT NULL DEFAULT 0"}}));
          return d->ExecScript(
              "CREATE TABLE IF NOT EXISTS job_events (job_id TEXT NOT NULL, "
              "seq BIGINT NOT NULL, attempt BIGINT NOT NULL, payload TEXT NOT "
              "NULL, PRIMARY KEY (job_id, seq));");
        }}}));
  return s;
}

absl::Status JobStore::Put(const JobRecord& r) {
  std::string sql = absl::StrCat("INSERT INTO jobs (", kColumns, ") VALUES (");
  for (int i = 0; i < kColumnCount; ++i) absl::StrAppend(&sql, i ? ", ?" : "?");
  absl::StrAppend(&sql, ") ON CONFLICT (id) DO UPDATE SET ");
  // Every column but the key takes the new value.
  const std::string columns = kColumns;
  size_t at = 0;
  bool first = true;
  while (at < columns.size()) {
    size_t end = columns.find(',', at);
    if (end == std::string::npos) end = columns.size();
    std::string c = columns.substr(at, end - at);
    c.erase(0, c.find_first_not_of(' '));
    if (c != "id") {
      absl::StrAppend(&sql, first ? "" : ", ", c, " = excluded.", c);
      first = false;
    }
    at = end + 1;
  }
  return db_->Exec(sql, {r.tenant,
                         r.id,
                         Int(r.state),
                         r.config_yaml,
                         r.request_digest,
                         r.create_ms,
                         r.start_ms,
                         r.end_ms,
                         r.tensors_done,
                         r.tensors_total,
                         static_cast<int64_t>(r.error_code),
                         r.error_message,
                         FilesJson(r),
                         r.result_bytes,
                         r.seconds,
                         r.result_dir,
                         nlohmann::json(r.metrics).dump(),
                         r.method,
                         r.replica,
                         static_cast<int64_t>(r.attempt),
                         r.lease_until_ms,
                         static_cast<int64_t>(r.cancel_requested ? 1 : 0),
                         r.phase,
                         r.phase_done,
                         r.phase_total,
                         r.bytes_read,
                         r.kind,
                         r.result,
                         r.params,
                         r.events});
}

absl::StatusOr<JobRecord> JobStore::InsertUnlessSame(
    const JobRecord& r, const std::function<bool(const JobRecord&)>& reuse) {
  JobRecord out = r;
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    // Two replicas given the same request at once serialise here.
    MS_RETURN_IF_ERROR(
        db_->LockKey(absl::StrCat("job:", r.tenant, ":", r.request_digest)));
    MS_ASSIGN_OR_RETURN(auto same, FindByDigest(r.tenant, r.request_digest));
    if (same && reuse(*same)) {
      out = *same;
      return absl::OkStatus();
    }
    MS_RETURN_IF_ERROR(Put(r));
    return db_->Notify(kChannel, "queued");
  }));
  return out;
}

absl::StatusOr<std::optional<JobRecord>> JobStore::Claim(
    const std::string& replica, int64_t lease_ms) {
  std::optional<JobRecord> out;
  // PostgreSQL: replicas claiming at once each skip the rows the others
  // hold. SQLite: the write transaction already excludes everyone.
  const char* skip = db_->dialect() == Database::Dialect::kPostgres
                         ? " FOR UPDATE SKIP LOCKED"
                         : "";
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        auto rows,
        db_->Query(absl::StrCat("SELECT id FROM jobs WHERE state = ? ORDER BY "
                                "create_ms, id LIMIT 1",
                                skip),
                   {Int(JobState::kQueued)}));
    if (rows.empty()) return absl::OkStatus();
    const std::string id = SqlString(rows[0][0]);
    MS_ASSIGN_OR_RETURN(const int64_t now, db_->ServerNowMs());
    MS_RETURN_IF_ERROR(db_->Exec(
        // start_ms stays 0 until a worker starts it (MarkStarted).
        "UPDATE jobs SET state = ?, replica = ?, attempt = attempt + 1, "
        "lease_until_ms = ?, start_ms = 0, cancel_requested = 0, "
        "tensors_done = 0, phase = '', phase_done = 0, phase_total = 0 WHERE "
        "id = ?",
        {Int(JobState::kRunning), replica, now + lease_ms, id}));
    MS_ASSIGN_OR_RETURN(JobRecord j, GetAny(id));
    out = std::move(j);
    return db_->Notify(kChannel, "job:" + id);
  }));
  return out;
}

absl::StatusOr<std::vector<std::string>> JobStore::RequeueExpired(
    int max_attempts) {
  std::vector<std::string> failed;
  const char* skip = db_->dialect() == Database::Dialect::kPostgres
                         ? " FOR UPDATE SKIP LOCKED"
                         : "";
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(const int64_t now, db_->ServerNowMs());
    MS_ASSIGN_OR_RETURN(
        auto rows,
        db_->Query(absl::StrCat("SELECT id, attempt, replica, "
                                "cancel_requested FROM jobs WHERE state = ? "
                                "AND lease_until_ms < ?",
                                skip),
                   {Int(JobState::kRunning), now}));
    for (const SqlRow& r : rows) {
      const std::string id = SqlString(r[0]);
      const int64_t attempt = SqlInt(r[1]);
      const std::string replica = SqlString(r[2]);
      if (SqlInt(r[3]) != 0) {
        // Cancelled while its replica was dying: honour it, do not rerun.
        MS_RETURN_IF_ERROR(db_->Exec(
            "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, "
            "end_ms = ?, lease_until_ms = 0, phase = '' WHERE id = ?",
            {Int(JobState::kCancelled),
             static_cast<int64_t>(absl::StatusCode::kCancelled),
             std::string("cancelled"), now, id}));
        failed.push_back(id);
        MS_RETURN_IF_ERROR(db_->Notify(kChannel, "job:" + id));
      } else if (attempt >= max_attempts) {
        MS_RETURN_IF_ERROR(db_->Exec(
            "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, "
            "end_ms = ?, lease_until_ms = 0 WHERE id = ?",
            {Int(JobState::kFailed),
             static_cast<int64_t>(absl::StatusCode::kAborted),
             absl::StrCat("the job lost its replica ", attempt, " times (",
                          "last '", replica,
                          "' stopped renewing its lease); "
                          "gave up after --max-attempts ",
                          max_attempts),
             now, id}));
        failed.push_back(id);
        MS_RETURN_IF_ERROR(db_->Notify(kChannel, "job:" + id));
      } else {
        MS_RETURN_IF_ERROR(db_->Exec(
            "UPDATE jobs SET state = ?, lease_until_ms = 0, phase = ?, "
            "phase_done = 0, phase_total = 0 WHERE id = ?",
            {Int(JobState::kQueued),
             absl::StrCat("requeued: replica '", replica,
                          "' stopped renewing its lease"),
             id}));
        MS_RETURN_IF_ERROR(db_->Notify(kChannel, "queued"));
        MS_RETURN_IF_ERROR(db_->Notify(kChannel, "job:" + id));
      }
    }
    return absl::OkStatus();
  }));
  return failed;
}

absl::StatusOr<std::vector<LeaseCheck>> JobStore::Heartbeat(
    const std::string& replica, const std::vector<JobRecord>& running,
    int64_t lease_ms) {
  std::vector<LeaseCheck> out;
  MS_ASSIGN_OR_RETURN(const int64_t now, db_->ServerNowMs());
  const int64_t until = now + lease_ms;
  for (const JobRecord& r : running) {
    // Fenced: only the replica and run that hold the lease renew it.
    MS_ASSIGN_OR_RETURN(
        auto rows,
        db_->Query(
            "UPDATE jobs SET lease_until_ms = ?, tensors_done = ?, "
            "tensors_total = ?, phase = ?, phase_done = ?, phase_total "
            "= ?, metrics = ? WHERE id = ? AND replica = ? AND attempt "
            "= ? AND state = ? RETURNING cancel_requested",
            {until, r.tensors_done, r.tensors_total, r.phase, r.phase_done,
             r.phase_total, nlohmann::json(r.metrics).dump(), r.id, replica,
             static_cast<int64_t>(r.attempt), Int(JobState::kRunning)}));
    if (!rows.empty()) {
      MS_RETURN_IF_ERROR(db_->Notify(kChannel, "job:" + r.id));
    }
    LeaseCheck c;
    c.id = r.id;
    c.attempt = r.attempt;
    c.lost = rows.empty();
    c.cancel_requested = !rows.empty() && SqlInt(rows[0][0]) != 0;
    out.push_back(c);
  }
  return out;
}

absl::Status JobStore::Complete(const JobRecord& d) {
  MS_ASSIGN_OR_RETURN(
      int64_t n,
      db_->ExecCount(
          "UPDATE jobs SET state = ?, start_ms = ?, end_ms = ?, "
          "tensors_done = ?, "
          "tensors_total = ?, error_code = ?, error_message = ?, files = ?, "
          "result_bytes = ?, seconds = ?, metrics = ?, phase = '', "
          "phase_done = 0, phase_total = 0, bytes_read = ?, result = ?, "
          "lease_until_ms = 0 WHERE id = ? AND replica = ? AND attempt = ? "
          "AND state = ?",
          {Int(d.state), d.start_ms, d.end_ms, d.tensors_done, d.tensors_total,
           static_cast<int64_t>(d.error_code), d.error_message, FilesJson(d),
           d.result_bytes, d.seconds, nlohmann::json(d.metrics).dump(),
           d.bytes_read, d.result, d.id, d.replica,
           static_cast<int64_t>(d.attempt), Int(JobState::kRunning)}));
  if (n == 0) {
    return absl::AbortedError(absl::StrCat(
        "job '", d.id, "': replica '", d.replica, "' no longer holds attempt ",
        d.attempt, "; its outcome is not recorded"));
  }
  return db_->Notify(kChannel, "job:" + d.id);
}

absl::Status JobStore::MarkStarted(const JobRecord& r) {
  MS_RETURN_IF_ERROR(
      db_->Exec("UPDATE jobs SET start_ms = ? WHERE id = ? AND replica = ? "
                "AND attempt = ? AND state = ?",
                {r.start_ms, r.id, r.replica, static_cast<int64_t>(r.attempt),
                 Int(JobState::kRunning)}));
  return db_->Notify(kChannel, "job:" + r.id);
}

absl::Status JobStore::CheckLease(const std::string& id,
                                  const std::string& replica, int attempt) {
  MS_ASSIGN_OR_RETURN(const int64_t now, db_->ServerNowMs());
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT 1 FROM jobs WHERE id = ? AND replica = ? AND attempt "
                 "= ? AND state = ? AND lease_until_ms >= ?",
                 {id, replica, static_cast<int64_t>(attempt),
                  Int(JobState::kRunning), now}));
  if (rows.empty()) {
    return absl::AbortedError(absl::StrCat(
        "job '", id, "': replica '", replica, "' no longer holds attempt ",
        attempt, "; its result is not committed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> JobStore::AppendEvent(const JobRecord& holder,
                                              const std::string& payload) {
  int64_t seq = 0;
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    // Fenced like every write of a running job; the row lock (PostgreSQL)
    // or the write lock (SQLite) orders the log.
    MS_ASSIGN_OR_RETURN(
        auto rows,
        db_->Query(
            "UPDATE jobs SET events = events + 1 WHERE id = ? AND "
            "replica = ? AND attempt = ? AND state = ? RETURNING events",
            {holder.id, holder.replica, static_cast<int64_t>(holder.attempt),
             Int(JobState::kRunning)}));
    if (rows.empty()) {
      return absl::AbortedError(
          absl::StrCat("job '", holder.id, "': replica '", holder.replica,
                       "' no longer holds attempt ", holder.attempt,
                       "; its event is not recorded"));
    }
    seq = SqlInt(rows[0][0]);
    MS_RETURN_IF_ERROR(db_->Exec(
        "INSERT INTO job_events (job_id, seq, attempt, payload) VALUES (?, ?, "
        "?, ?)",
        {holder.id, seq, static_cast<int64_t>(holder.attempt), payload}));
    return db_->Notify(kChannel, "job:" + holder.id);
  }));
  return seq;
}

absl::StatusOr<std::vector<JobLogEntry>> JobStore::Events(const std::string& id,
                                                          int64_t after) const {
  MS_ASSIGN_OR_RETURN(auto rows,
                      db_->Query("SELECT seq, attempt, payload FROM job_events "
                                 "WHERE job_id = ? AND seq > ? ORDER BY seq",
                                 {id, after}));
  std::vector<JobLogEntry> out;
  for (const SqlRow& r : rows) {
    out.push_back(
        {SqlInt(r[0]), static_cast<int>(SqlInt(r[1])), SqlString(r[2])});
  }
  return out;
}

absl::Status JobStore::Release(const std::string& id,
                               const std::string& replica, int attempt) {
  // A cancel asked for meanwhile ends the job instead.
  MS_RETURN_IF_ERROR(db_->Exec(
      // (Typed parameters: PostgreSQL cannot infer them inside CASE.)
      "UPDATE jobs SET state = CASE WHEN cancel_requested = 1 THEN CAST(? AS "
      "BIGINT) ELSE CAST(? AS BIGINT) END, error_code = CASE WHEN "
      "cancel_requested = 1 THEN CAST(? AS BIGINT) ELSE error_code END, "
      "error_message = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE "
      "error_message END, end_ms = CASE WHEN cancel_requested = 1 THEN "
      "CAST(? AS BIGINT) ELSE end_ms END, attempt = attempt - 1, "
      "replica = '', lease_until_ms = 0, tensors_done = 0, phase = CASE WHEN "
      "cancel_requested = 1 THEN '' ELSE 'handed back by a draining replica' "
      "END, phase_done = 0, phase_total = 0 WHERE id = ? AND replica = ? AND "
      "attempt = ? AND state = ?",
      {Int(JobState::kCancelled), Int(JobState::kQueued),
       static_cast<int64_t>(absl::StatusCode::kCancelled), NowMs(), id, replica,
       static_cast<int64_t>(attempt), Int(JobState::kRunning)}));
  MS_RETURN_IF_ERROR(db_->Notify(kChannel, "queued"));
  return db_->Notify(kChannel, "job:" + id);
}

absl::StatusOr<bool> JobStore::RequestCancel(const std::string& tenant,
                                             const std::string& id) {
  bool cancelled_now = false;
  const char* lock =
      db_->dialect() == Database::Dialect::kPostgres ? " FOR UPDATE" : "";
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    // The row is held from here on: a requeue or hand-back in between
    // cannot slip past both branches.
    MS_ASSIGN_OR_RETURN(
        auto rows, db_->Query(absl::StrCat("SELECT state FROM jobs WHERE id = "
                                           "? AND tenant = ?",
                                           lock),
                              {id, tenant}));
    if (rows.empty()) return absl::OkStatus();
    const auto state = static_cast<JobState>(SqlInt(rows[0][0]));
    if (state == JobState::kQueued) {
      MS_RETURN_IF_ERROR(db_->Exec(
          "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, "
          "end_ms = ?, phase = '' WHERE id = ?",
          {Int(JobState::kCancelled),
           static_cast<int64_t>(absl::StatusCode::kCancelled),
           std::string("cancelled before it started"), NowMs(), id}));
      cancelled_now = true;
      return db_->Notify(kChannel, "job:" + id);
    }
    if (state != JobState::kRunning) return absl::OkStatus();
    MS_RETURN_IF_ERROR(
        db_->Exec("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", {id}));
    // The replica running it stops now rather than at its next heartbeat.
    return db_->Notify(kChannel, "cancel:" + id);
  }));
  return cancelled_now;
}

absl::Status JobStore::RequeueOwn(const std::string& replica) {
  // Expire the leases now; RequeueExpired then counts the attempts.
  return db_->Exec(
      "UPDATE jobs SET lease_until_ms = 0 WHERE state = ? AND replica = ?",
      {Int(JobState::kRunning), replica});
}

absl::Status JobStore::TouchReplica(const std::string& replica,
                                    int64_t start_ms) {
  MS_ASSIGN_OR_RETURN(const int64_t now, db_->ServerNowMs());
  return db_->Exec(
      "INSERT INTO replicas (id, start_ms, seen_ms) VALUES (?, ?, ?) ON "
      "CONFLICT (id) DO UPDATE SET start_ms = excluded.start_ms, seen_ms = "
      "excluded.seen_ms",
      {replica, start_ms, now});
}

absl::StatusOr<std::unique_ptr<DatabaseListener>> JobStore::Listen() const {
  return db_->Listen(kChannel);
}

absl::StatusOr<std::vector<ReplicaRecord>> JobStore::Replicas() const {
  MS_ASSIGN_OR_RETURN(
      auto rows, db_->Query("SELECT id, start_ms, seen_ms FROM replicas ORDER "
                            "BY id"));
  std::vector<ReplicaRecord> out;
  for (const SqlRow& r : rows) {
    out.push_back({SqlString(r[0]), SqlInt(r[1]), SqlInt(r[2])});
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> JobStore::LiveReplicas(
    const std::string& except, int64_t within_ms) const {
  MS_ASSIGN_OR_RETURN(auto all, Replicas());
  std::vector<std::string> out;
  MS_ASSIGN_OR_RETURN(const int64_t now, db_->ServerNowMs());
  const int64_t recent = now - within_ms;
  for (const ReplicaRecord& r : all) {
    if (r.id != except && r.seen_ms >= recent) out.push_back(r.id);
  }
  return out;
}

absl::StatusOr<JobRecord> JobStore::GetAny(const std::string& id) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?"),
                 {id}));
  if (rows.empty()) return NotFound(id);
  return FromRow(rows[0]);
}

absl::StatusOr<JobRecord> JobStore::Get(const std::string& tenant,
                                        const std::string& id) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              " FROM jobs WHERE id = ? AND tenant = ?"),
                 {id, tenant}));
  if (rows.empty()) return NotFound(id);
  return FromRow(rows[0]);
}

absl::StatusOr<std::optional<JobRecord>> JobStore::FindByDigest(
    const std::string& tenant, const std::string& digest) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              " FROM jobs WHERE tenant = ? AND request_digest "
                              "= ? AND state IN (?, ?, ?) ORDER BY create_ms "
                              "DESC LIMIT 1"),
                 {tenant, digest, static_cast<int64_t>(JobState::kSucceeded),
                  static_cast<int64_t>(JobState::kRunning),
                  static_cast<int64_t>(JobState::kQueued)}));
  if (rows.empty()) return std::optional<JobRecord>();
  return std::optional<JobRecord>(FromRow(rows[0]));
}

absl::StatusOr<Page<JobRecord>> JobStore::List(const std::string& tenant,
                                               std::optional<JobState> state,
                                               const PageRequest& page) const {
  int64_t after_ms = -1;
  std::string after_id;
  if (!page.token.empty()) {
    MS_ASSIGN_OR_RETURN(auto key, DecodePageToken(page.token, 2));
    after_ms = std::strtoll(key[0].c_str(), nullptr, 10);
    after_id = key[1];
  }
  const int64_t limit = page.size > 0 ? page.size : kSqlNoLimit;
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(
          absl::StrCat("SELECT ", kSummaryColumns,
                       " FROM jobs WHERE tenant = ? AND (? = 0 OR state = ?) "
                       "AND (create_ms > ? OR (create_ms = ? AND id > ?)) "
                       "ORDER BY create_ms, id LIMIT ?"),
          {tenant, static_cast<int64_t>(state ? 1 : 0),
           static_cast<int64_t>(state ? static_cast<int>(*state) : 0), after_ms,
           after_ms, after_id, limit}));
  Page<JobRecord> out;
  for (const SqlRow& r : rows) out.items.push_back(FromRow(r));
  if (limit > 0 && static_cast<int64_t>(out.items.size()) == limit) {
    out.next_token = EncodePageToken(
        {std::to_string(out.items.back().create_ms), out.items.back().id});
  }
  return out;
}

absl::Status JobStore::Delete(const std::string& tenant,
                              const std::string& id) {
  int64_t n = 0;
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_ASSIGN_OR_RETURN(
        n, db_->ExecCount("DELETE FROM jobs WHERE id = ? AND tenant = ?",
                          {id, tenant}));
    if (n == 0) return absl::OkStatus();
    return db_->Exec("DELETE FROM job_events WHERE job_id = ?", {id});
  }));
  if (n == 0) return NotFound(id);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> JobStore::CountActive(const std::string& tenant) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state IN (?, "
                 "?)",
                 {tenant, static_cast<int64_t>(JobState::kQueued),
                  static_cast<int64_t>(JobState::kRunning)}));
  return rows.empty() ? 0 : SqlInt(rows[0][0]);
}

absl::StatusOr<int64_t> JobStore::CountQueued() const {
  MS_ASSIGN_OR_RETURN(auto rows,
                      db_->Query("SELECT COUNT(*) FROM jobs WHERE state = ?",
                                 {Int(JobState::kQueued)}));
  return rows.empty() ? 0 : SqlInt(rows[0][0]);
}

absl::StatusOr<int64_t> JobStore::ResultBytes(const std::string& tenant) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT COALESCE(SUM(result_bytes), 0) FROM jobs WHERE tenant "
                 "= ? AND state = ?",
                 {tenant, static_cast<int64_t>(JobState::kSucceeded)}));
  return rows.empty() ? 0 : SqlInt(rows[0][0]);
}

absl::StatusOr<int64_t> JobStore::CountUsing(const std::string& dir) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT COUNT(*) FROM jobs WHERE result_dir = ?", {dir}));
  return rows.empty() ? 0 : SqlInt(rows[0][0]);
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>>
JobStore::EndedBefore(int64_t before_ms, int64_t limit) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(
          "SELECT tenant, id FROM jobs WHERE state IN (?, ?, ?) AND "
          "end_ms > 0 AND end_ms < ? ORDER BY end_ms LIMIT ?",
          {static_cast<int64_t>(JobState::kSucceeded),
           static_cast<int64_t>(JobState::kFailed),
           static_cast<int64_t>(JobState::kCancelled), before_ms, limit}));
  std::vector<std::pair<std::string, std::string>> out;
  for (const SqlRow& r : rows)
    out.push_back({SqlString(r[0]), SqlString(r[1])});
  return out;
}

}  // namespace mergeserve
