#include "mergeserve/jobs/job_manager.h"

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kSchema[] = R"sql(
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
))sql";

constexpr char kColumns[] =
    "id, state, config_yaml, request_digest, create_ms, start_ms, end_ms, "
    "tensors_done, tensors_total, error_code, error_message, files, "
    "result_bytes, seconds, result_dir, metrics";

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string NewId() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("job-%012x", rng() & 0xffffffffffffull);
}

JobRecord FromRow(const SqlRow& r) {
  JobRecord j;
  j.id = SqlString(r[0]);
  j.state = static_cast<JobState>(SqlInt(r[1]));
  j.config_yaml = SqlString(r[2]);
  j.request_digest = SqlString(r[3]);
  j.create_ms = SqlInt(r[4]);
  j.start_ms = SqlInt(r[5]);
  j.end_ms = SqlInt(r[6]);
  j.tensors_done = SqlInt(r[7]);
  j.tensors_total = SqlInt(r[8]);
  j.error_code = static_cast<int>(SqlInt(r[9]));
  j.error_message = SqlString(r[10]);
  auto files = nlohmann::json::parse(SqlString(r[11]), nullptr, false);
  if (files.is_array()) {
    for (const auto& f : files) {
      j.files.push_back({f.value("name", ""), f.value("size", int64_t{0}),
                         f.value("sha256", "")});
    }
  }
  j.result_bytes = SqlInt(r[12]);
  j.seconds = SqlReal(r[13]);
  j.result_dir = SqlString(r[14]);
  auto metrics = nlohmann::json::parse(SqlString(r[15]), nullptr, false);
  if (metrics.is_object()) {
    for (auto it = metrics.begin(); it != metrics.end(); ++it) {
      if (it.value().is_number()) j.metrics[it.key()] = it.value();
    }
  }
  return j;
}

// Checkpoints a config refers to (base, models, fisher/gram).
std::set<std::string> ReferencedCheckpoints(const MergeConfig& c) {
  std::set<std::string> refs;
  if (c.base_model) refs.insert(*c.base_model);
  for (const ModelEntry& m : c.models) {
    refs.insert(m.model);
    for (const auto& [key, value] : m.parameters) {
      if (IsPerModelOnlyParameter(key) && value.is_string()) {
        refs.insert(*value.AsString(key));
      }
    }
  }
  return refs;
}

}  // namespace

bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed ||
         s == JobState::kCancelled;
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    Options options) {
  if (options.registry == nullptr) {
    return absl::InvalidArgumentError("JobManager needs a registry");
  }
  std::unique_ptr<JobManager> m(new JobManager());
  options.workers = std::max(1, options.workers);
  if (options.threads_per_job <= 0) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    options.threads_per_job = std::max(1, cores / options.workers);
  }
  m->options_ = options;
  m->cache_ = std::make_unique<TaskVectorCache>(options.cache_budget);
  std::error_code ec;
  fs::create_directories(options.data_dir + "/results", ec);
  MS_ASSIGN_OR_RETURN(
      m->db_, SqliteDatabase::Open(options.data_dir + "/mergeserve.db"));
  MS_RETURN_IF_ERROR(m->db_->Exec(kSchema));
  // Columns added after the first release.
  MS_RETURN_IF_ERROR(m->db_->AddMissingColumns(
      "jobs", {{"metrics", "TEXT NOT NULL DEFAULT '{}'"}}));
  // A job that was running when the process died has no result: fail it.
  MS_RETURN_IF_ERROR(m->db_->Exec(
      "UPDATE jobs SET state = ?, error_code = ?, error_message = ?, end_ms = "
      "? "
      "WHERE state = ?",
      {static_cast<int64_t>(JobState::kFailed),
       static_cast<int64_t>(absl::StatusCode::kAborted),
       std::string("the server stopped while this job ran; submit it again"),
       NowMs(), static_cast<int64_t>(JobState::kRunning)}));
  MS_ASSIGN_OR_RETURN(
      auto queued,
      m->db_->Query("SELECT id FROM jobs WHERE state = ? ORDER BY create_ms",
                    {static_cast<int64_t>(JobState::kQueued)}));
  for (const auto& r : queued) m->queue_.push_back(SqlString(r[0]));
  for (int i = 0; i < options.workers; ++i) {
    m->workers_.emplace_back([p = m.get()] { p->WorkerLoop(); });
  }
  return m;
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [id, r] : running_) r.cancel->store(true);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

absl::Status JobManager::Persist(const JobRecord& r) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : r.files) {
    files.push_back(
        {{"name", f.name}, {"size", f.size_bytes}, {"sha256", f.sha256}});
  }
  return db_->Exec(
      absl::StrCat("INSERT OR REPLACE INTO jobs (", kColumns,
                   ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
      {r.id, static_cast<int64_t>(r.state), r.config_yaml, r.request_digest,
       r.create_ms, r.start_ms, r.end_ms, r.tensors_done, r.tensors_total,
       static_cast<int64_t>(r.error_code), r.error_message, files.dump(),
       r.result_bytes, r.seconds, r.result_dir,
       nlohmann::json(r.metrics).dump()});
}

absl::StatusOr<JobRecord> JobManager::Load(const std::string& id) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?"),
                 {id}));
  if (rows.empty()) {
    return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
  }
  return FromRow(rows[0]);
}

absl::StatusOr<JobRecord> JobManager::Submit(const std::string& config_yaml) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) {
      return absl::UnavailableError("the server is shutting down");
    }
  }
  MS_ASSIGN_OR_RETURN(MergeConfig config,
                      MergeConfig::FromYaml(config_yaml, options_.data_dir));
  if (config.merge_method != "ri" &&
      FindMethod(config.merge_method) == nullptr) {
    return CreateMethod(config.merge_method).status();
  }
  // Opening the plan checks names, tensors, shapes and parameter ranges now,
  // before the job waits in the queue; data-aware requests are planned with
  // stand-ins for the statistics they will compute.
  MS_ASSIGN_OR_RETURN(MergeConfig planning,
                      DataAwarePlanningConfig(config, *options_.registry));
  MS_ASSIGN_OR_RETURN(
      auto plan, MergePlan::Create(planning, options_.registry->Resolver()));
  if (options_.memory_budget > 0) {
    const int64_t need =
        EstimateMergeMemory(*plan, Backend::kFused, options_.threads_per_job);
    if (need > options_.memory_budget) {
      return absl::ResourceExhaustedError(
          absl::StrCat("this merge needs about ", need >> 20,
                       " MiB, more than the server's memory budget of ",
                       options_.memory_budget >> 20, " MiB"));
    }
  }
  std::string lines = config_yaml + "\n--\n";
  for (const std::string& ref : ReferencedCheckpoints(config)) {
    MS_ASSIGN_OR_RETURN(CheckpointRecord c, options_.registry->Get(ref, false));
    absl::StrAppend(&lines, ref, " ", c.content_digest, "\n");
  }
  MS_ASSIGN_OR_RETURN(std::string data_lines,
                      DataAwareDigestLines(config, *options_.registry));
  const std::string digest = Sha256Hex(lines + data_lines);

  std::lock_guard<std::mutex> lock(mu_);
  // Content addressing: an identical request over identical checkpoints
  // returns the job that has (or is computing) that result.
  MS_ASSIGN_OR_RETURN(
      auto same,
      db_->Query(
          absl::StrCat("SELECT ", kColumns,
                       " FROM jobs WHERE request_digest = ? AND state IN "
                       "(?, ?, ?) ORDER BY create_ms DESC LIMIT 1"),
          {digest, static_cast<int64_t>(JobState::kSucceeded),
           static_cast<int64_t>(JobState::kRunning),
           static_cast<int64_t>(JobState::kQueued)}));
  if (!same.empty()) {
    JobRecord existing = FromRow(same[0]);
    auto it = running_.find(existing.id);
    if (it != running_.end()) return it->second.record;
    if (existing.state != JobState::kSucceeded ||
        fs::exists(existing.result_dir)) {
      return existing;
    }
  }
  if (static_cast<int>(queue_.size()) >= options_.queue_limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the merge queue is full (", options_.queue_limit,
                     " jobs waiting); try again later"));
  }
  JobRecord j;
  j.id = NewId();
  j.state = JobState::kQueued;
  j.config_yaml = config_yaml;
  j.request_digest = digest;
  j.create_ms = NowMs();
  j.tensors_total = static_cast<int64_t>(plan->tensors().size());
  j.result_dir = options_.data_dir + "/results/" + digest;
  MS_RETURN_IF_ERROR(Persist(j));
  queue_.push_back(j.id);
  cv_.notify_one();
  LogEvent("job_queued", {{"job", j.id},
                          {"method", config.merge_method},
                          {"request_digest", j.request_digest.substr(0, 16)},
                          {"queue_depth", std::to_string(queue_.size())}});
  return j;
}

absl::StatusOr<MergeDiagnostics> JobManager::Analyze(
    const std::string& config_yaml) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("the server is shutting down");
  }
  MS_ASSIGN_OR_RETURN(MergeConfig config,
                      MergeConfig::FromYaml(config_yaml, options_.data_dir));
  // Diagnostics cover task-vector methods: of the data-aware ones only RI
  // (diagnostics of the adapted experts) is prepared; Fisher and RegMean
  // fail fast in AnalyzeMerge instead of first computing statistics.
  const bool ri = config.merge_method == "ri";
  MS_ASSIGN_OR_RETURN(PreparedMerge prepared,
                      Prepare(ri ? config : MergeConfig{}, nullptr, {},
                              /*measure_interference=*/false));
  if (!ri) prepared.config = config;
  MergeOptions mo;
  mo.resolver = prepared.resolver;
  mo.threads = options_.threads_per_job;
  mo.cache = cache_.get();
  mo.digest = prepared.digest;
  MS_ASSIGN_OR_RETURN(MergeDiagnostics d, AnalyzeMerge(prepared.config, mo));
  // Adapted experts are reported under the names the request used.
  std::map<std::string, std::string> names;
  for (size_t i = 0; i < config.models.size(); ++i) {
    names[prepared.config.models[i].model] = config.models[i].model;
  }
  for (std::string& e : d.experts) {
    auto it = names.find(e);
    if (it != names.end()) e = it->second;
  }
  return d;
}

absl::StatusOr<PreparedMerge> JobManager::Prepare(
    const MergeConfig& config, const std::atomic<bool>* cancelled,
    std::function<void(const std::string&, int64_t, int64_t)> progress,
    bool measure_interference) {
  DataAwareOptions o;
  o.measure_interference = measure_interference;
  o.registry = options_.registry;
  o.stats_dir = options_.data_dir + "/stats";
  o.device = options_.device;
  o.counters = &stats_counters_;
  o.progress = std::move(progress);
  o.cancelled = cancelled;
  return PrepareDataAware(config, o);
}

absl::StatusOr<JobRecord> JobManager::Get(const std::string& id) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = running_.find(id);
    if (it != running_.end()) return it->second.record;
  }
  return Load(id);
}

absl::StatusOr<std::vector<JobRecord>> JobManager::List(
    std::optional<JobState> state) const {
  MS_ASSIGN_OR_RETURN(
      auto rows, db_->Query(absl::StrCat("SELECT ", kColumns,
                                         " FROM jobs ORDER BY create_ms")));
  std::vector<JobRecord> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& r : rows) {
    JobRecord j = FromRow(r);
    auto it = running_.find(j.id);
    if (it != running_.end()) j = it->second.record;
    if (!state || j.state == *state) out.push_back(std::move(j));
  }
  return out;
}

absl::StatusOr<JobRecord> JobManager::Cancel(const std::string& id) {
  JobRecord j;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = running_.find(id);
    if (it != running_.end()) {
      it->second.cancel->store(true);
      return it->second.record;  // becomes CANCELLED at the next tensor
    }
    MS_ASSIGN_OR_RETURN(j, Load(id));
    if (IsFinal(j.state)) return j;
    queue_.erase(std::remove(queue_.begin(), queue_.end(), id), queue_.end());
    j.state = JobState::kCancelled;
    j.error_code = static_cast<int>(absl::StatusCode::kCancelled);
    j.error_message = "cancelled before it started";
    j.end_ms = NowMs();
    MS_RETURN_IF_ERROR(Persist(j));
  }
  LogEvent("job_cancelled", {{"job", j.id}, {"while", "queued"}});
  Notify(j);
  if (options_.on_finished) options_.on_finished(j);
  return j;
}

absl::StatusOr<uint64_t> JobManager::Subscribe(const std::string& id,
                                               Listener fn) {
  JobRecord now;
  uint64_t sub;
  {
    // Snapshot and registration under one lock: every later event is at
    // least as new as the snapshot.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = running_.find(id);
    if (it != running_.end()) {
      now = it->second.record;
    } else {
      MS_ASSIGN_OR_RETURN(now, Load(id));
    }
    sub = next_listener_++;
    listeners_[sub] = {id, fn};
  }
  fn(now);
  return sub;
}

void JobManager::Unsubscribe(uint64_t subscription) {
  std::lock_guard<std::mutex> lock(mu_);
  listeners_.erase(subscription);
}

void JobManager::Notify(const JobRecord& r) {
  std::vector<Listener> fns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [sub, entry] : listeners_) {
      if (entry.first == r.id) fns.push_back(entry.second);
    }
  }
  for (const auto& fn : fns) fn(r);
}

void JobManager::Drain(std::chrono::milliseconds grace) {
  std::unique_lock<std::mutex> lock(mu_);
  draining_ = true;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  cv_.wait_until(lock, deadline, [&] { return running_.empty(); });
  for (auto& [id, r] : running_) r.cancel->store(true);
  cv_.wait(lock, [&] { return running_.empty(); });
}

JobStats JobManager::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {static_cast<int64_t>(queue_.size()),
          static_cast<int64_t>(running_.size()), memory_in_use_};
}

void JobManager::WorkerLoop() {
  for (;;) {
    std::string id;
    std::shared_ptr<std::atomic<bool>> cancel;
    JobRecord job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock,
               [&] { return stopping_ || (!draining_ && !queue_.empty()); });
      if (stopping_) return;
      id = queue_.front();
      queue_.pop_front();
      auto loaded = Load(id);
      if (!loaded.ok() || loaded->state != JobState::kQueued) continue;
      job = *loaded;
      cancel = std::make_shared<std::atomic<bool>>(false);
      // Claimed (cancellable) but still QUEUED until RunJob has memory.
      running_[id] = {cancel, job};
    }
    RunJob(job, cancel);
  }
}

void JobManager::RunJob(JobRecord job,
                        std::shared_ptr<std::atomic<bool>> cancel) {
  absl::Status status;
  int64_t reserved = 0;
  MergeSummary summary;
  auto config = MergeConfig::FromYaml(job.config_yaml, options_.data_dir);
  std::unique_ptr<MergePlan> plan;
  if (config.ok()) {
    auto planning = DataAwarePlanningConfig(*config, *options_.registry);
    auto p = planning.ok()
                 ? MergePlan::Create(*planning, options_.registry->Resolver())
                 : planning.status();
    if (p.ok()) {
      plan = std::move(*p);
    } else {
      status = p.status();
    }
  } else {
    status = config.status();
  }
  if (status.ok() && options_.memory_budget > 0) {
    // Wait until the shared budget has room for this job.
    reserved =
        EstimateMergeMemory(*plan, Backend::kFused, options_.threads_per_job);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      return memory_in_use_ + reserved <= options_.memory_budget ||
             memory_in_use_ == 0 || cancel->load();
    });
    memory_in_use_ += reserved;
  }
  if (status.ok() && !cancel->load()) {
    JobRecord started;
    {
      std::lock_guard<std::mutex> lock(mu_);
      JobRecord& r = running_[job.id].record;
      r.state = JobState::kRunning;
      r.start_ms = NowMs();
      (void)Persist(r);
      started = r;
    }
    LogEvent("job_started", {{"job", job.id}});
    Notify(started);
    auto last = std::chrono::steady_clock::now();
    // Data-aware methods first compute their statistics (or find them).
    auto prepared = Prepare(
        *config, cancel.get(),
        [&](const std::string& phase, int64_t done, int64_t total) {
          JobRecord snapshot;
          {
            std::lock_guard<std::mutex> lock(mu_);
            JobRecord& r = running_[job.id].record;
            r.phase = phase;
            r.phase_done = done;
            r.phase_total = total;
            snapshot = r;
          }
          const auto now = std::chrono::steady_clock::now();
          if (done == total || now - last > std::chrono::milliseconds(100)) {
            last = now;
            Notify(snapshot);
          }
        });
    if (!prepared.ok()) status = prepared.status();
    MergeOptions mo;
    mo.output_dir = job.result_dir;
    mo.overwrite = true;
    mo.threads = options_.threads_per_job;
    mo.cancelled = cancel.get();
    mo.cache = cache_.get();
    if (prepared.ok()) {
      mo.resolver = prepared->resolver;
      mo.digest = prepared->digest;
      std::lock_guard<std::mutex> lock(mu_);
      JobRecord& r = running_[job.id].record;
      r.metrics = prepared->metrics;
      r.phase = "merge";
      r.phase_done = r.phase_total = 0;
    }
    mo.on_progress = [&](const MergeProgress& p) {
      JobRecord snapshot;
      {
        std::lock_guard<std::mutex> lock(mu_);
        JobRecord& r = running_[job.id].record;
        r.tensors_done = p.tensors_done;
        r.tensors_total = p.tensors_total;
        snapshot = r;
      }
      const auto now = std::chrono::steady_clock::now();
      if (p.tensors_done == p.tensors_total ||
          now - last > std::chrono::milliseconds(50)) {
        last = now;
        Notify(snapshot);
      }
    };
    if (status.ok()) {
      auto s = RunMerge(prepared->config, mo);
      if (s.ok()) {
        summary = *s;
      } else {
        status = s.status();
      }
    }
    if (status.ok() && prepared->ri != nullptr) {
      auto xi = prepared->ri->Interference(job.result_dir);
      if (xi.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        running_[job.id].record.metrics["ri.interference_after"] = *xi;
      }
    }
  } else if (status.ok()) {
    status = absl::CancelledError("merge cancelled");
  }
  JobRecord done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = running_[job.id].record;
  }
  done.end_ms = NowMs();
  done.phase.clear();
  if (status.ok()) {
    done.state = JobState::kSucceeded;
    done.seconds = summary.seconds;
    done.bytes_read = static_cast<int64_t>(summary.bytes_read);
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(job.result_dir, ec)) {
      if (e.is_regular_file()) names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    for (const std::string& n : names) {
      const std::string path = job.result_dir + "/" + n;
      auto h = Sha256File(path);
      const int64_t size = static_cast<int64_t>(fs::file_size(path, ec));
      done.files.push_back({n, size, h.ok() ? *h : ""});
      done.result_bytes += size;
    }
  } else {
    done.state = status.code() == absl::StatusCode::kCancelled
                     ? JobState::kCancelled
                     : JobState::kFailed;
    done.error_code = static_cast<int>(status.code());
    done.error_message = std::string(status.message());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    (void)Persist(done);
    running_.erase(job.id);
  }
  LogEvent("job_finished",
           {{"job", done.id},
            {"state", done.state == JobState::kSucceeded   ? "SUCCEEDED"
                      : done.state == JobState::kCancelled ? "CANCELLED"
                                                           : "FAILED"},
            {"seconds",
             absl::StrFormat("%.3f", (done.end_ms - done.start_ms) / 1000.0)},
            {"result_bytes", std::to_string(done.result_bytes)},
            {"error", done.error_message}});
  // Watchers hear of the end before the memory goes to the next job.
  Notify(done);
  if (options_.on_finished) options_.on_finished(done);
  {
    std::lock_guard<std::mutex> lock(mu_);
    memory_in_use_ -= reserved;
  }
  cv_.notify_all();
}

}  // namespace mergeserve
