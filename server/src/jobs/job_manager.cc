#include "mergeserve/jobs/job_manager.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/secure_random.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/registry/storage_roots.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

absl::StatusOr<std::string> NewId() {
  MS_ASSIGN_OR_RETURN(std::string hex, SecureRandomHex(6));
  return "job-" + hex;
}

}  // namespace

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
  std::shared_ptr<SqliteDatabase> db = options.db;
  if (db == nullptr) {
    MS_ASSIGN_OR_RETURN(
        auto opened, SqliteDatabase::Open(options.data_dir + "/mergeserve.db"));
    db = std::move(opened);
  }
  MS_ASSIGN_OR_RETURN(m->store_, JobStore::Open(db));
  WorkExecutor::Options wo;
  wo.workers = options.workers;
  wo.queue_limit = options.queue_limit;
  wo.memory_budget = options.memory_budget;
  m->executor_ = std::make_unique<WorkExecutor>(wo);
  MS_ASSIGN_OR_RETURN(auto queued, m->store_->RecoverAfterRestart());
  for (const std::string& id : queued) {
    MS_ASSIGN_OR_RETURN(JobRecord job, m->store_->GetAny(id));
    // Jobs accepted before the restart are planned again (their inputs
    // may have changed meanwhile) and keep their place in the queue.
    absl::Status s;
    auto config = MergeConfig::FromYaml(job.config_yaml, options.data_dir);
    if (config.ok()) {
      auto planned = PlanMerge({job.tenant, *std::move(config)},
                               *options.registry, options.threads_per_job);
      s = planned.ok()
              ? m->Enqueue(job,
                           std::make_shared<PlannedMerge>(*std::move(planned)),
                           /*force=*/true)
              : planned.status();
    } else {
      s = config.status();
    }
    if (!s.ok()) {
      job.state = JobState::kFailed;
      job.error_code = static_cast<int>(s.code());
      job.error_message = std::string(s.message());
      job.end_ms = NowMs();
      MS_RETURN_IF_ERROR(m->store_->Put(job));
    }
  }
  if (options.retention_ms > 0) {
    m->janitor_ = std::thread([p = m.get()] { p->JanitorLoop(); });
  }
  return m;
}

JobManager::~JobManager() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  janitor_cv_.notify_all();
  if (janitor_.joinable()) janitor_.join();
  // Cancels what runs and waits for it; queued jobs stay QUEUED on disk.
  executor_.reset();
}

absl::StatusOr<JobRecord> JobManager::Submit(MergeRequest request) {
  const std::string tenant = request.tenant;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("the server is shutting down");
  }
  Quota quota;
  if (options_.quotas != nullptr) {
    MS_ASSIGN_OR_RETURN(quota, options_.quotas->Get(tenant));
    MS_ASSIGN_OR_RETURN(int64_t active, store_->CountActive(tenant));
    MS_RETURN_IF_ERROR(
        CheckQuota(tenant, "max_jobs", quota.max_jobs, active, 1));
  }
  MS_ASSIGN_OR_RETURN(PlannedMerge planned,
                      PlanMerge(std::move(request), *options_.registry,
                                options_.threads_per_job));
  // One content-address check and insert at a time, so the same request
  // sent twice at once gives one job.
  std::lock_guard<std::mutex> submit_lock(submit_mu_);
  MS_ASSIGN_OR_RETURN(auto same, store_->FindByDigest(tenant, planned.digest));
  if (same) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = active_.find(same->id);
      if (it != active_.end()) return it->second.record;
    }
    std::error_code ec;
    if (same->state != JobState::kSucceeded ||
        fs::is_directory(same->result_dir, ec)) {
      return *same;
    }
  }
  if (options_.quotas != nullptr) {
    MS_ASSIGN_OR_RETURN(int64_t stored, StoredBytes(tenant));
    MS_RETURN_IF_ERROR(CheckQuota(tenant, "max_stored_bytes",
                                  quota.max_stored_bytes, stored,
                                  planned.output_bytes));
  }
  JobRecord j;
  j.tenant = tenant;
  MS_ASSIGN_OR_RETURN(j.id, NewId());
  j.state = JobState::kQueued;
  j.config_yaml = planned.canonical_yaml;
  j.method = planned.request.config.merge_method;
  j.request_digest = planned.digest;
  j.create_ms = NowMs();
  j.tensors_total = planned.tensors_total;
  j.result_dir = options_.data_dir + "/results/" + planned.digest;
  MS_RETURN_IF_ERROR(store_->Put(j));
  absl::Status queued =
      Enqueue(j, std::make_shared<PlannedMerge>(std::move(planned)), false);
  if (!queued.ok()) {
    (void)store_->Delete(tenant, j.id);
    return queued;
  }
  LogEvent("job_queued",
           {{"job", j.id},
            {"tenant", tenant},
            {"method", j.method},
            {"request_digest", j.request_digest.substr(0, 16)},
            {"queue_depth", std::to_string(executor_->stats().queued)}});
  return j;
}

absl::Status JobManager::Enqueue(JobRecord job,
                                 std::shared_ptr<PlannedMerge> planned,
                                 bool force) {
  const std::string id = job.id;
  WorkItem item;
  item.kind = "merge";
  item.label = id;
  item.memory = planned->memory;
  item.run = [this, id, planned](const std::atomic<bool>& cancelled) {
    RunJob(id, planned, cancelled);
  };
  item.abandon = [this, id](const absl::Status& why) {
    JobRecord r;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = active_.find(id);
      if (it == active_.end()) return;
      r = it->second.record;
      active_.erase(it);
    }
    // Shutting down: the job stays QUEUED for the next start.
    if (!absl::IsCancelled(why)) return;
    r.state = JobState::kCancelled;
    r.error_code = static_cast<int>(absl::StatusCode::kCancelled);
    r.error_message = "cancelled before it started";
    r.end_ms = NowMs();
    Finish(std::move(r));
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_[id].record = job;
  }
  auto ticket = executor_->Submit(std::move(item), force);
  std::lock_guard<std::mutex> lock(mu_);
  if (!ticket.ok()) {
    active_.erase(id);
    return ticket.status();
  }
  auto it = active_.find(id);
  if (it != active_.end()) it->second.ticket = *ticket;
  return absl::OkStatus();
}

void JobManager::Update(const std::string& id,
                        const std::function<void(JobRecord&)>& f, bool notify) {
  JobRecord snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it == active_.end()) return;
    f(it->second.record);
    snapshot = it->second.record;
  }
  if (notify) Notify(snapshot);
}

void JobManager::RunJob(const std::string& id,
                        std::shared_ptr<PlannedMerge> planned,
                        const std::atomic<bool>& cancelled) {
  JobRecord job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it == active_.end()) return;
    it->second.record.state = JobState::kRunning;
    it->second.record.start_ms = NowMs();
    job = it->second.record;
  }
  (void)store_->Put(job);
  LogEvent("job_started", {{"job", id}, {"tenant", job.tenant}});
  Notify(job);

  absl::Status status;
  MergeSummary summary;
  auto last = std::chrono::steady_clock::now();
  auto throttled = [&](bool force) {
    const auto now = std::chrono::steady_clock::now();
    if (force || now - last > std::chrono::milliseconds(100)) {
      last = now;
      return true;
    }
    return false;
  };
  const MergeConfig& config = planned->request.config;
  // Data-aware methods first compute their statistics (or find them); a
  // plain request passes through with the tenant's resolver and digests.
  auto prepared =
      Prepare(job.tenant, config, &cancelled,
              [&](const std::string& phase, int64_t done, int64_t total) {
                Update(
                    id,
                    [&](JobRecord& r) {
                      r.phase = phase;
                      r.phase_done = done;
                      r.phase_total = total;
                    },
                    throttled(done == total));
              });
  if (!prepared.ok()) status = prepared.status();
  MergeOptions mo;
  mo.output_dir = job.result_dir;
  mo.overwrite = true;
  mo.threads = options_.threads_per_job;
  mo.cancelled = &cancelled;
  mo.cache = cache_.get();
  mo.reject_non_finite = true;
  mo.config_text = planned->canonical_yaml;
  mo.on_progress = [&](const MergeProgress& p) {
    Update(
        id,
        [&](JobRecord& r) {
          r.tensors_done = p.tensors_done;
          r.tensors_total = p.tensors_total;
        },
        throttled(p.tensors_done == p.tensors_total));
  };
  if (status.ok()) {
    Update(
        id,
        [&](JobRecord& r) {
          r.metrics = prepared->metrics;
          r.phase = "merge";
          r.phase_done = r.phase_total = 0;
        },
        false);
    mo.resolver = prepared->resolver;
    mo.digest = prepared->digest;
    absl::StatusOr<MergeSummary> s;
    if (planned->runnable && planned->plan != nullptr) {
      s = RunMergePlan(std::move(planned->plan), mo);
    } else {
      s = RunMerge(prepared->config, mo);
    }
    if (s.ok()) {
      summary = *s;
    } else {
      status = s.status();
    }
  }
  if (status.ok() && prepared->ri != nullptr) {
    auto xi = prepared->ri->Interference(job.result_dir);
    if (xi.ok()) {
      Update(
          id, [&](JobRecord& r) { r.metrics["ri.interference_after"] = *xi; },
          false);
    }
  }
  JobRecord done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = active_[id].record;
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
  Finish(std::move(done));
}

void JobManager::Finish(JobRecord done) {
  (void)store_->Put(done);
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(done.id);
  }
  // A job that never started ran for no time at all.
  const double seconds =
      done.start_ms > 0 ? (done.end_ms - done.start_ms) / 1000.0 : 0.0;
  LogEvent("job_finished", {{"job", done.id},
                            {"tenant", done.tenant},
                            {"state", JobStateName(done.state)},
                            {"seconds", absl::StrFormat("%.3f", seconds)},
                            {"result_bytes", std::to_string(done.result_bytes)},
                            {"error", done.error_message}});
  Notify(done);
  if (options_.on_finished) options_.on_finished(done);
}

absl::StatusOr<JobRecord> JobManager::Get(const std::string& tenant,
                                          const std::string& id) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end() && it->second.record.tenant == tenant) {
      return it->second.record;
    }
  }
  return store_->Get(tenant, id);
}

absl::StatusOr<Page<JobRecord>> JobManager::List(
    const std::string& tenant, std::optional<JobState> state,
    const PageRequest& page) const {
  // Queued and running jobs carry their live progress.
  MS_ASSIGN_OR_RETURN(Page<JobRecord> out, store_->List(tenant, state, page));
  std::lock_guard<std::mutex> lock(mu_);
  for (JobRecord& j : out.items) {
    auto it = active_.find(j.id);
    if (it != active_.end()) {
      JobRecord live = it->second.record;
      live.config_yaml.clear();
      j = std::move(live);
    }
  }
  return out;
}

absl::StatusOr<JobRecord> JobManager::Cancel(const std::string& tenant,
                                             const std::string& id) {
  std::shared_ptr<WorkTicket> ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end() && it->second.record.tenant == tenant) {
      ticket = it->second.ticket;
    }
  }
  if (ticket != nullptr) {
    // Queued: abandoned at once (CANCELLED); running: stops at the next
    // tensor. Not under mu_: abandoning takes it.
    ticket->Cancel();
    return Get(tenant, id);
  }
  MS_ASSIGN_OR_RETURN(JobRecord j, store_->Get(tenant, id));
  return j;
}

absl::Status JobManager::Delete(const std::string& tenant,
                                const std::string& id) {
  MS_ASSIGN_OR_RETURN(JobRecord j, Get(tenant, id));
  if (!IsFinal(j.state)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", id, "' is ", JobStateName(j.state), "; cancel it first"));
  }
  MS_RETURN_IF_ERROR(store_->Delete(tenant, id));
  MS_ASSIGN_OR_RETURN(int64_t users, store_->CountUsing(j.result_dir));
  if (users == 0 && !j.result_dir.empty() &&
      StorageRoots::IsInside(j.result_dir, options_.data_dir + "/results")) {
    std::error_code ec;
    fs::remove_all(j.result_dir, ec);
  }
  LogEvent("job_deleted", {{"job", id}, {"tenant", tenant}});
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> JobManager::Subscribe(const std::string& tenant,
                                               const std::string& id,
                                               Listener fn) {
  JobRecord now;
  uint64_t sub;
  {
    // Snapshot and registration under one lock: every later event is at
    // least as new as the snapshot.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end() && it->second.record.tenant == tenant) {
      now = it->second.record;
    } else {
      MS_ASSIGN_OR_RETURN(now, store_->Get(tenant, id));
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

absl::StatusOr<std::shared_ptr<WorkTicket>> JobManager::RunWork(WorkItem item) {
  return executor_->Submit(std::move(item));
}

absl::StatusOr<PlannedMerge> JobManager::PlanAnalysis(
    MergeRequest request) const {
  const std::string& method = request.config.merge_method;
  if (method != "ri" && !IsAnalyzable(method)) {
    return AnalyzableError(method);
  }
  return PlanMerge(std::move(request), *options_.registry,
                   options_.threads_per_job);
}

absl::StatusOr<MergeDiagnostics> JobManager::Analyze(
    PlannedMerge planned, const std::atomic<bool>* cancelled) {
  const MergeConfig& config = planned.request.config;
  // Diagnostics cover task-vector methods; of the data-aware ones RI
  // (diagnostics of the adapted experts).
  const bool ri = config.merge_method == "ri";
  MS_ASSIGN_OR_RETURN(
      PreparedMerge prepared,
      Prepare(planned.request.tenant, ri ? config : MergeConfig{}, cancelled,
              {}, /*measure_interference=*/false));
  MergeOptions mo;
  mo.threads = options_.threads_per_job;
  mo.cache = cache_.get();
  mo.digest = prepared.digest;
  mo.cancelled = cancelled;
  MergeDiagnostics d;
  if (ri) {
    mo.resolver = prepared.resolver;
    MS_ASSIGN_OR_RETURN(d, AnalyzeMerge(prepared.config, mo));
  } else {
    MS_ASSIGN_OR_RETURN(d, AnalyzeMergePlan(std::move(planned.plan), mo));
  }
  // Adapted experts are reported under the names the request used.
  std::map<std::string, std::string> names;
  if (ri) {
    for (size_t i = 0; i < config.models.size(); ++i) {
      names[prepared.config.models[i].model] = config.models[i].model;
    }
  }
  for (std::string& e : d.experts) {
    auto it = names.find(e);
    if (it != names.end()) e = it->second;
  }
  return d;
}

absl::StatusOr<PreparedMerge> JobManager::Prepare(
    const std::string& tenant, const MergeConfig& config,
    const std::atomic<bool>* cancelled,
    std::function<void(const std::string&, int64_t, int64_t)> progress,
    bool measure_interference) {
  DataAwareOptions o;
  o.measure_interference = measure_interference;
  o.registry = options_.registry;
  o.tenant = tenant;
  o.threads = options_.threads_per_job;
  o.stats_dir = options_.data_dir + "/stats";
  o.device = options_.device;
  o.counters = &stats_counters_;
  o.progress = std::move(progress);
  o.cancelled = cancelled;
  return PrepareDataAware(config, o);
}

void JobManager::Drain(std::chrono::milliseconds grace) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  executor_->Drain(grace);
}

int64_t JobManager::ExpireOldJobs() {
  if (options_.retention_ms <= 0) return 0;
  int64_t removed = 0;
  for (;;) {
    auto old = store_->EndedBefore(NowMs() - options_.retention_ms, 256);
    if (!old.ok() || old->empty()) break;
    for (const auto& [tenant, id] : *old) {
      if (Delete(tenant, id).ok()) ++removed;
    }
    if (old->size() < 256) break;
  }
  if (removed > 0) {
    LogEvent("jobs_expired", {{"count", std::to_string(removed)}});
  }
  return removed;
}

void JobManager::JanitorLoop() {
  const auto period = std::chrono::milliseconds(
      std::clamp<int64_t>(options_.retention_ms / 10, 1000, 3600 * 1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    ExpireOldJobs();
    lock.lock();
    janitor_cv_.wait_for(
        lock, period,
        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; });
  }
}

absl::StatusOr<int64_t> JobManager::StoredBytes(
    const std::string& tenant) const {
  MS_ASSIGN_OR_RETURN(int64_t uploads, options_.registry->StoredBytes(tenant));
  MS_ASSIGN_OR_RETURN(int64_t results, store_->ResultBytes(tenant));
  return uploads + results;
}

JobStats JobManager::stats() const {
  const WorkStats w = executor_->stats();
  return {w.queued, w.running, w.memory_in_use};
}

}  // namespace mergeserve
