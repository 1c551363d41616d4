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
    "error_message, files, result_bytes, seconds, result_dir, metrics, method";
constexpr char kColumns[] =
    "tenant, id, state, config_yaml, request_digest, create_ms, start_ms, "
    "end_ms, tensors_done, tensors_total, error_code, error_message, files, "
    "result_bytes, seconds, result_dir, metrics, method";

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
  return j;
}

absl::Status NotFound(const std::string& id) {
  return absl::NotFoundError(
      absl::StrCat("job '", Abbreviate(id), "' not found"));
}

}  // namespace

bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed ||
         s == JobState::kCancelled;
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
    std::shared_ptr<SqliteDatabase> db) {
  std::unique_ptr<JobStore> s(new JobStore());
  s->db_ = std::move(db);
  SqliteDatabase* d = s->db_.get();
  MS_RETURN_IF_ERROR(d->Migrate(
      "jobs",
      {{1, "jobs",
        [d] {
          MS_RETURN_IF_ERROR(d->Exec(R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  state INTEGER NOT NULL,
  config_yaml TEXT NOT NULL,
  request_digest TEXT NOT NULL,
  create_ms INTEGER NOT NULL,
  start_ms INTEGER NOT NULL DEFAULT 0,
  end_ms INTEGER NOT NULL DEFAULT 0,
  tensors_done INTEGER NOT NULL DEFAULT 0,
  tensors_total INTEGER NOT NULL DEFAULT 0,
  error_code INTEGER NOT NULL DEFAULT 0,
  error_message TEXT NOT NULL DEFAULT '',
  files TEXT NOT NULL DEFAULT '[]',
  result_bytes INTEGER NOT NULL DEFAULT 0,
  seconds REAL NOT NULL DEFAULT 0,
  result_dir TEXT NOT NULL DEFAULT ''
))sql"));
          return d->AddMissingColumns(
              "jobs", {{"metrics", "TEXT NOT NULL DEFAULT '{}'"}});
        }},
       {2, "tenants", [d] {
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
        }}}));
  return s;
}

absl::Status JobStore::Put(const JobRecord& r) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : r.files) {
    files.push_back(
        {{"name", f.name}, {"size", f.size_bytes}, {"sha256", f.sha256}});
  }
  return db_->Exec(
      absl::StrCat("INSERT OR REPLACE INTO jobs (", kColumns,
                   ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                   "?, ?)"),
      {r.tenant, r.id, static_cast<int64_t>(r.state), r.config_yaml,
       r.request_digest, r.create_ms, r.start_ms, r.end_ms, r.tensors_done,
       r.tensors_total, static_cast<int64_t>(r.error_code), r.error_message,
       files.dump(), r.result_bytes, r.seconds, r.result_dir,
       nlohmann::json(r.metrics).dump(), r.method});
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
  const int64_t limit = page.size > 0 ? page.size : -1;
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
  MS_RETURN_IF_ERROR(
      db_->Exec("DELETE FROM jobs WHERE id = ? AND tenant = ?", {id, tenant}));
  if (db_->changes() == 0) return NotFound(id);
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

absl::StatusOr<std::vector<std::string>> JobStore::RecoverAfterRestart() {
  // A job that was running when the process died has no result: fail it.
  MS_RETURN_IF_ERROR(db_->Exec(
      "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, end_ms = "
      "? WHERE state = ?",
      {static_cast<int64_t>(JobState::kFailed),
       static_cast<int64_t>(absl::StatusCode::kAborted),
       std::string("the server stopped while this job ran; submit it again"),
       NowMs(), static_cast<int64_t>(JobState::kRunning)}));
  MS_ASSIGN_OR_RETURN(
      auto queued,
      db_->Query("SELECT id FROM jobs WHERE state = ? ORDER BY create_ms, id",
                 {static_cast<int64_t>(JobState::kQueued)}));
  std::vector<std::string> ids;
  for (const auto& r : queued) ids.push_back(SqlString(r[0]));
  return ids;
}

}  // namespace mergeserve
