#include "mergeserve/jobs/job_manager.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/secure_random.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/jobs/evaluation_job.h"
#include "mergeserve/jobs/sweep_job.h"
#include "mergeserve/jobs/sweep_runner.h"
#include "mergeserve/registry/storage_roots.h"
#include "mergeserve/store/sqlite_database.h"

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
  options.max_attempts = std::max(1, options.max_attempts);
  if (options.threads_per_job <= 0) {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    options.threads_per_job = std::max(1, cores / options.workers);
  }
  m->options_ = options;
  m->cache_ = std::make_unique<TaskVectorCache>(options.cache_budget);
  // At most one fused row of points. Tagged like a temporary: a start
  // clears scratch/ of what no live replica is using.
  m->scratch_pool_ = std::make_unique<ScratchPool>(
      absl::StrCat(options.data_dir, "/scratch/pool", TempTag()),
      kFusedScratchBytes);
  std::error_code ec;
  fs::create_directories(options.data_dir + "/results", ec);
  std::shared_ptr<Database> db = options.db;
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
  // This replica restarted: what it held before cannot still be running.
  MS_RETURN_IF_ERROR(m->store_->RequeueOwn(options.replica_id));
  JobDispatcher::Options dopt;
  dopt.replica = options.replica_id;
  dopt.lease_ms = options.lease_ms;
  dopt.max_attempts = options.max_attempts;
  JobDispatcher::Hooks hooks;
  JobManager* self = m.get();
  hooks.has_capacity = [self] {
    // A worker's worth of held jobs, and nothing else waiting for one.
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      if (self->draining_ || self->stopping_ ||
          static_cast<int>(self->active_.size()) >= self->options_.workers) {
        return false;
      }
    }
    return self->executor_->stats().queued == 0;
  };
  hooks.start = [self](JobRecord j) { self->Start(std::move(j)); };
  hooks.held = [self] {
    std::vector<JobRecord> held;
    std::lock_guard<std::mutex> lock(self->mu_);
    for (const auto& [id, a] : self->active_) held.push_back(a.record);
    return held;
  };
  hooks.on_check = [self](const LeaseCheck& c) { self->OnLeaseCheck(c); };
  hooks.on_failed = [self](const std::vector<std::string>& ids) {
    for (const std::string& id : ids) {
      auto j = self->store_->GetAny(id);
      if (!j.ok()) continue;
      LogEvent("job_finished", {{"job", id},
                                {"tenant", j->tenant},
                                {"state", JobStateName(j->state)},
                                {"error", j->error_message}});
      if (self->options_.on_finished) self->options_.on_finished(*j);
    }
  };
  hooks.on_poll = [self] { self->PollRemote(); };
  m->dispatcher_ =
      std::make_unique<JobDispatcher>(m->store_.get(), dopt, std::move(hooks));
  m->dispatcher_->Start();
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
  // The dispatcher's threads end first (no claim can start a job on a
  // dying executor); then what runs is cancelled and awaited, and its jobs
  // go back to the queue (one that cannot be handed back is taken over
  // when its lease lapses).
  dispatcher_.reset();
  executor_.reset();
}

absl::StatusOr<JobRecord> JobManager::Submit(MergeRequest request) {
  return SubmitKind(kMergeJob, std::move(request));
}

absl::StatusOr<JobRecord> JobManager::SubmitAnalysis(MergeRequest request) {
  return SubmitKind(kAnalyzeJob, std::move(request));
}

absl::StatusOr<PlannedMerge> JobManager::PlanKind(const std::string& kind,
                                                  MergeRequest request) const {
  if (kind == kAnalyzeJob) return PlanAnalysis(std::move(request));
  std::string scratch;
  if (!request.stages.empty()) {
    // Sketches of the stages, while the request is planned.
    MS_ASSIGN_OR_RETURN(std::string hex, SecureRandomHex(4));
    scratch = StageScratch("plan-", hex);
  }
  return PlanMerge(std::move(request), *options_.registry,
                   options_.threads_per_job, scratch);
}

void JobManager::RemoveEarlierStageRuns(const std::string& id,
                                        const std::string& mine) const {
  // An earlier attempt of this job on a replica that died left its stages
  // here (the orphan sweep spares them until that replica id restarts);
  // this attempt owns the job now.
  std::error_code ec;
  for (const auto& e :
       fs::directory_iterator(options_.data_dir + "/scratch", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("stages-run-", 0) == 0 && absl::EndsWith(name, id) &&
        e.path().string() != mine) {
      fs::remove_all(e.path(), ec);
      LogEvent("orphan_removed", {{"path", e.path().string()}, {"job", id}});
    }
  }
}

std::string JobManager::StageScratch(const std::string& what,
                                     const std::string& id) const {
  // Under scratch/ with this replica's tag: the orphan sweep of another
  // replica leaves it alone while this one lives.
  return absl::StrCat(options_.data_dir, "/scratch/stages-", what, TempTag(),
                      id);
}

absl::Status JobManager::Admit(const std::string& tenant) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("the server is shutting down");
  }
  if (options_.quotas == nullptr) return absl::OkStatus();
  MS_ASSIGN_OR_RETURN(Quota quota, options_.quotas->Get(tenant));
  MS_ASSIGN_OR_RETURN(int64_t active, store_->CountActive(tenant));
  return CheckQuota(tenant, "max_jobs", quota.max_jobs, active, 1);
}

absl::StatusOr<std::optional<JobRecord>> JobManager::Reusable(
    const std::string& tenant, const std::string& digest,
    std::optional<JobRecord>* stale) {
  // A job of this tenant that holds or computes the same result is the
  // answer (on any replica); a succeeded one only while its result exists.
  MS_ASSIGN_OR_RETURN(auto same, store_->FindByDigest(tenant, digest));
  if (!same) return same;
  std::error_code ec;
  const bool usable =
      same->state != JobState::kSucceeded ||
      (same->kind == kMergeJob ? fs::is_directory(same->result_dir, ec)
                               : !same->result.empty());
  if (!usable) {
    *stale = std::move(same);  // Enqueue replaces it
    return std::optional<JobRecord>();
  }
  MS_ASSIGN_OR_RETURN(JobRecord now, Get(tenant, same->id));
  return std::optional<JobRecord>(std::move(now));
}

absl::Status JobManager::CheckRoom(int64_t memory, const char* what) {
  MS_ASSIGN_OR_RETURN(int64_t waiting, store_->CountQueued());
  if (waiting >= options_.queue_limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job queue is full (", waiting, " waiting, --queue-limit ",
        options_.queue_limit, "); retry later"));
  }
  // Refused up front, like the executor would, rather than failing later.
  if (options_.memory_budget > 0 && memory > options_.memory_budget) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this ", what, " needs up to ", FormatBytes(memory),
                     " of memory, more than the server's memory budget of ",
                     FormatBytes(options_.memory_budget)));
  }
  return absl::OkStatus();
}

absl::StatusOr<JobRecord> JobManager::Enqueue(
    JobRecord j, const std::optional<JobRecord>& stale) {
  // Inside the insert's transaction (the store's connection and an advisory
  // lock are held) nothing touches the filesystem, which may be a slow
  // shared volume: the job examined before is known stale, and one that
  // another replica added meanwhile has just committed its result.
  const std::string stale_id = stale ? stale->id : std::string();
  MS_ASSIGN_OR_RETURN(
      JobRecord stored,
      store_->InsertUnlessSame(j, [&stale_id](const JobRecord& found) {
        return found.id != stale_id;
      }));
  if (stored.id != j.id) {
    std::lock_guard<std::mutex> lock(mu_);
    plans_.erase(j.id);
    work_plans_.erase(j.id);
    return stored;  // another replica inserted the same request just now
  }
  dispatcher_->Wake();
  LogEvent("job_queued", {{"job", j.id},
                          {"tenant", j.tenant},
                          {"kind", j.kind},
                          {"method", j.method},
                          {"request_digest", j.request_digest.substr(0, 16)}});
  return j;
}

absl::StatusOr<JobRecord> JobManager::SubmitKind(const std::string& kind,
                                                 MergeRequest request) {
  const std::string tenant = request.tenant;
  const bool analysis = kind == kAnalyzeJob;
  MS_RETURN_IF_ERROR(Admit(tenant));
  MS_ASSIGN_OR_RETURN(PlannedMerge planned, PlanKind(kind, std::move(request)));
  // An analysis is addressed apart from the merge of the same request.
  const std::string digest =
      analysis ? "analyze-" + planned.digest : planned.digest;
  std::optional<JobRecord> stale;
  MS_ASSIGN_OR_RETURN(auto same, Reusable(tenant, digest, &stale));
  if (same) return *same;
  if (options_.quotas != nullptr && !analysis) {
    MS_ASSIGN_OR_RETURN(Quota quota, options_.quotas->Get(tenant));
    MS_ASSIGN_OR_RETURN(int64_t stored, StoredBytes(tenant));
    MS_RETURN_IF_ERROR(
        CheckQuota(tenant, "max_stored_bytes", quota.max_stored_bytes, stored,
                   planned.output_bytes + planned.scratch_bytes));
  }
  MS_RETURN_IF_ERROR(CheckRoom(planned.memory, "merge"));
  JobRecord j;
  j.tenant = tenant;
  MS_ASSIGN_OR_RETURN(j.id, NewId());
  j.state = JobState::kQueued;
  j.config_yaml = planned.canonical_yaml;
  j.method = planned.request.config.merge_method;
  j.kind = kind;
  j.request_digest = digest;
  j.create_ms = NowMs();
  j.tensors_total = planned.tensors_total;
  if (!analysis) j.result_dir = options_.data_dir + "/results/" + digest;
  {
    // Kept before the insert: a claim may come at once.
    std::lock_guard<std::mutex> lock(mu_);
    while (plans_.size() >= 64) plans_.erase(plans_.begin());
    plans_[j.id] = std::make_shared<PlannedMerge>(std::move(planned));
  }
  return Enqueue(std::move(j), stale);
}

absl::StatusOr<JobRecord> JobManager::SubmitWorkJob(WorkJobRequest request) {
  MS_RETURN_IF_ERROR(Admit(request.tenant));
  std::optional<JobRecord> stale;
  MS_ASSIGN_OR_RETURN(auto same,
                      Reusable(request.tenant, request.digest, &stale));
  if (same) return *same;
  MS_RETURN_IF_ERROR(CheckRoom(request.planned.memory, request.kind.c_str()));
  JobRecord j;
  j.tenant = request.tenant;
  MS_ASSIGN_OR_RETURN(j.id, NewId());
  j.state = JobState::kQueued;
  j.config_yaml = std::move(request.config_yaml);
  j.params = std::move(request.params);
  j.method = std::move(request.method);
  j.kind = request.kind;
  j.request_digest = request.digest;
  j.create_ms = NowMs();
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (work_plans_.size() >= 64) work_plans_.erase(work_plans_.begin());
    work_plans_[j.id] =
        std::make_shared<PlannedWorkJob>(std::move(request.planned));
  }
  return Enqueue(std::move(j), stale);
}

std::shared_ptr<PlannedMerge> JobManager::TakePlan(const JobRecord& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(job.id);
    if (it != plans_.end()) {
      auto plan = it->second;
      plans_.erase(it);
      // A plan is used once: a second attempt plans again.
      if (job.attempt <= 1 && plan->plan != nullptr) return plan;
    }
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<PlannedWorkJob>> JobManager::TakeWorkPlan(
    const JobRecord& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = work_plans_.find(job.id);
    if (it != work_plans_.end()) {
      auto plan = it->second;
      work_plans_.erase(it);
      if (job.attempt <= 1) return plan;
    }
  }
  // Submitted to another replica, or an earlier attempt: plan again from
  // the stored request.
  absl::StatusOr<PlannedWorkJob> p = job.kind == kSweepJob
                                         ? PlanSweepJob(*this, job)
                                         : PlanEvaluationJob(*this, job);
  if (!p.ok()) return p.status();
  return std::make_shared<PlannedWorkJob>(*std::move(p));
}

void JobManager::Start(JobRecord job) {
  const std::string id = job.id;
  ++replica_counters_.claimed;
  {
    // Held from the claim on, so heartbeats renew its lease while it is
    // planned; shown QUEUED until a worker and memory are free.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end()) {
      // An earlier run here lost its lease (heartbeats stalled past it) and
      // is still winding down: it stops, this claim goes back to the queue.
      it->second.stop = StopReason::kLeaseLost;
      if (it->second.ticket != nullptr) it->second.ticket->Cancel();
      (void)store_->Release(id, job.replica, job.attempt);
      return;
    }
    Active& a = active_[id];
    a.record = job;
    a.record.state = JobState::kQueued;
    a.record.start_ms = 0;  // set when a worker starts it
  }
  WorkItem item;
  item.kind = job.kind;
  item.label = id;
  if (job.kind == kSweepJob || job.kind == kEvaluateJob) {
    auto work = TakeWorkPlan(job);
    if (!work.ok()) {
      FailBeforeRun(std::move(job), work.status());
      return;
    }
    item.memory = (*work)->memory;
    item.run = [this, id, w = *work](const std::atomic<bool>& cancelled) {
      RunWorkJob(id, w, cancelled);
    };
  }
  std::shared_ptr<PlannedMerge> planned = item.run ? nullptr : TakePlan(job);
  if (!item.run && planned == nullptr) {
    // Submitted to another replica, or an earlier attempt: plan again from
    // the stored request (its inputs may have changed meanwhile).
    absl::Status s;
    auto request =
        MergeRequestFromYaml(job.tenant, job.config_yaml, options_.data_dir);
    if (request.ok()) {
      auto p = PlanKind(job.kind, *std::move(request));
      if (p.ok()) {
        planned = std::make_shared<PlannedMerge>(*std::move(p));
      } else {
        s = p.status();
      }
    } else {
      s = request.status();
    }
    if (!s.ok()) {
      FailBeforeRun(std::move(job), s);
      return;
    }
  }
  if (item.run) {
    // planned above
  } else if (job.kind == kAnalyzeJob) {
    item.memory = planned->memory;
    item.run = [this, id, planned](const std::atomic<bool>& cancelled) {
      RunAnalysis(id, planned, cancelled);
    };
  } else {
    item.memory = planned->memory;
    item.run = [this, id, planned](const std::atomic<bool>& cancelled) {
      RunJob(id, planned, cancelled);
    };
  }
  item.abandon = [this, id](const absl::Status& why) {
    JobRecord r;
    StopReason stop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = active_.find(id);
      if (it == active_.end()) return;
      r = it->second.record;
      stop = it->second.stop;
    }
    if (stop == StopReason::kNone) stop = StopReason::kShutdown;
    r.state = JobState::kCancelled;
    r.error_code = static_cast<int>(absl::StatusCode::kCancelled);
    r.error_message = absl::IsCancelled(why) ? "cancelled before it started"
                                             : std::string(why.message());
    r.end_ms = NowMs();
    Finish(std::move(r), stop);
  };
  auto ticket = executor_->Submit(std::move(item), /*force=*/true);
  if (!ticket.ok()) {
    if (absl::IsUnavailable(ticket.status())) {
      Finish(job, StopReason::kShutdown);  // draining: another replica runs it
      return;
    }
    // It can never run here (e.g. over this replica's memory budget): fail
    // it rather than hand it back to be claimed again and again.
    FailBeforeRun(std::move(job), ticket.status());
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(id);
  if (it != active_.end()) it->second.ticket = *ticket;
}

void JobManager::FailBeforeRun(JobRecord job, const absl::Status& why) {
  job.state = JobState::kFailed;
  job.error_code = static_cast<int>(why.code());
  job.error_message = std::string(why.message());
  job.end_ms = NowMs();
  Finish(std::move(job), StopReason::kNone);
}

void JobManager::OnLeaseCheck(const LeaseCheck& c) {
  std::shared_ptr<WorkTicket> ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(c.id);
    // A check about another run of the job, or one already recording its
    // end (its heartbeat raced the final write), changes nothing.
    if (it == active_.end() || it->second.finishing ||
        (c.attempt != 0 && it->second.record.attempt != c.attempt)) {
      return;
    }
    it->second.stop = c.lost ? StopReason::kLeaseLost : StopReason::kUser;
    ticket = it->second.ticket;
  }
  if (c.lost) {
    ++replica_counters_.leases_lost;
    LogEvent("job_lease_lost",
             {{"job", c.id}, {"replica", options_.replica_id}});
  }
  if (ticket != nullptr) ticket->Cancel();
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

std::optional<JobRecord> JobManager::MarkStarted(const std::string& id) {
  JobRecord job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it == active_.end()) return std::nullopt;
    it->second.record.state = JobState::kRunning;
    it->second.record.start_ms = NowMs();
    job = it->second.record;
  }
  // Seen as RUNNING from every replica from now on.
  (void)store_->MarkStarted(job);
  LogEvent("job_started", {{"job", id},
                           {"tenant", job.tenant},
                           {"kind", job.kind},
                           {"replica", job.replica},
                           {"attempt", std::to_string(job.attempt)}});
  Notify(job);
  return job;
}

void JobManager::RunJob(const std::string& id,
                        std::shared_ptr<PlannedMerge> planned,
                        const std::atomic<bool>& cancelled) {
  std::optional<JobRecord> started = MarkStarted(id);
  if (!started) return;
  const JobRecord& job = *started;
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
  mo.digest_outputs = true;
  mo.uncache_outputs = true;
  mo.config_text = planned->canonical_yaml;
  // Fencing for the shared data dir: a run whose replica lost the lease
  // (and has not heard yet) does not rename its result into place. A
  // store that is briefly away gets a few tries.
  mo.before_commit = [this, id = job.id, replica = job.replica,
                      attempt = job.attempt]() {
    absl::Status s;
    for (int i = 0; i < 5; ++i) {
      s = store_->CheckLease(id, replica, attempt);
      if (s.ok() || absl::IsAborted(s)) return s;
      std::this_thread::sleep_for(std::chrono::milliseconds(200 << i));
    }
    return s;
  };
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
    if (!planned->request.stages.empty()) {
      // Each stage is planned and run when the ones it reads have run, into
      // scratch that goes away with the job; stages show as phases.
      StageSetup setup;
      setup.resolver = prepared->resolver;
      setup.scratch_dir = StageScratch("run-", id);
      RemoveEarlierStageRuns(id, setup.scratch_dir);
      setup.check_for = StorageRoots::OwnedFileCheck;
      auto stage_progress = mo.on_progress;
      mo.on_progress = [&](const MergeProgress& p) {
        if (p.stage.empty()) return stage_progress(p);
        Update(
            id,
            [&](JobRecord& r) {
              r.phase = "stage " + p.stage;
              r.phase_done = p.tensors_done;
              r.phase_total = p.tensors_total;
            },
            throttled(p.tensors_done == p.tensors_total));
      };
      s = RunMergeStages(planned->request.Staged(), mo, setup);
    } else if (planned->runnable && planned->plan != nullptr) {
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
    auto it = active_.find(id);
    if (it == active_.end()) return;
    done = it->second.record;
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
    // The writer hashed the files it synced; anything else (a data-aware
    // merge's extra files) is read here.
    const std::map<std::string, std::string> hashed(
        summary.file_digests.begin(), summary.file_digests.end());
    for (const std::string& n : names) {
      const std::string path = job.result_dir + "/" + n;
      auto known = hashed.find(n);
      absl::StatusOr<std::string> h =
          known != hashed.end() ? absl::StatusOr<std::string>(known->second)
                                : Sha256File(path);
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
  StopReason stop = StopReason::kNone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end()) stop = it->second.stop;
  }
  Finish(std::move(done), status.ok() ? StopReason::kNone : stop);
}

void JobManager::RunAnalysis(const std::string& id,
                             std::shared_ptr<PlannedMerge> planned,
                             const std::atomic<bool>& cancelled) {
  if (!MarkStarted(id)) return;
  const auto start = std::chrono::steady_clock::now();
  auto d = Analyze(std::move(*planned), &cancelled);
  EndWithResult(
      id, start,
      d.ok() ? absl::StatusOr<std::string>(DiagnosticsToJson(*d)) : d.status());
}

void JobManager::EndWithResult(const std::string& id,
                               std::chrono::steady_clock::time_point start,
                               absl::StatusOr<std::string> result) {
  std::optional<JobRecord> held = Held(id);
  if (!held) return;
  JobRecord done = *std::move(held);
  StopReason stop;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    stop = it != active_.end() ? it->second.stop : StopReason::kNone;
  }
  done.end_ms = NowMs();
  done.phase.clear();
  done.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  if (result.ok()) {
    done.state = JobState::kSucceeded;
    done.result = *std::move(result);
    stop = StopReason::kNone;
  } else {
    done.state = absl::IsCancelled(result.status()) ? JobState::kCancelled
                                                    : JobState::kFailed;
    done.error_code = static_cast<int>(result.status().code());
    done.error_message = std::string(result.status().message());
  }
  Finish(std::move(done), stop);
}

std::optional<JobRecord> JobManager::Held(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(id);
  if (it == active_.end()) return std::nullopt;
  return it->second.record;
}

void JobManager::RunWorkJob(const std::string& id,
                            std::shared_ptr<PlannedWorkJob> planned,
                            const std::atomic<bool>& cancelled) {
  std::optional<JobRecord> started = MarkStarted(id);
  if (!started) return;
  const auto start = std::chrono::steady_clock::now();
  JobContext ctx;
  ctx.job = *started;
  ctx.cancelled = &cancelled;
  ctx.log = [this, id](const std::string& payload) -> absl::Status {
    std::optional<JobRecord> holder = Held(id);
    if (!holder) return absl::AbortedError("the job is no longer held here");
    absl::StatusOr<int64_t> seq = store_->AppendEvent(*holder, payload);
    if (absl::IsAborted(seq.status())) {
      // Another replica took the job over: this run stops, writes nothing.
      std::lock_guard<std::mutex> lock(mu_);
      auto it = active_.find(id);
      if (it != active_.end()) it->second.stop = StopReason::kLeaseLost;
    }
    MS_RETURN_IF_ERROR(seq.status());
    Update(
        id, [&](JobRecord& r) { r.events = std::max(r.events, *seq); }, true);
    return absl::OkStatus();
  };
  auto last = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  ctx.progress = [this, id, &last](const std::string& phase, int64_t done,
                                   int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    const bool changed = [&] {
      auto r = Held(id);
      return r && r->phase != phase;
    }();
    const bool notify =
        changed || done == total || now - last > std::chrono::milliseconds(100);
    if (notify) last = now;
    Update(
        id,
        [&](JobRecord& r) {
          r.phase = phase;
          r.phase_done = done;
          r.phase_total = total;
        },
        notify);
  };
  absl::StatusOr<std::string> result;
  auto earlier = store_->Events(id, 0);
  if (earlier.ok()) {
    ctx.earlier = *std::move(earlier);
    result = planned->run(ctx);
  } else {
    result = earlier.status();
  }
  EndWithResult(id, start, std::move(result));
}

void JobManager::Finish(JobRecord done, StopReason stop) {
  // Its slot frees up below: look for the next job then (not while the
  // manager is being destroyed: the dispatcher goes first).
  struct WakeAtEnd {
    JobManager* m;
    ~WakeAtEnd() {
      std::lock_guard<std::mutex> lock(m->mu_);
      if (!m->stopping_ && m->dispatcher_ != nullptr) m->dispatcher_->Wake();
    }
  } wake{this};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(done.id);
    if (it != active_.end()) it->second.finishing = true;
    if (stop == StopReason::kNone && done.state == JobState::kCancelled &&
        done.error_code == static_cast<int>(absl::StatusCode::kCancelled) &&
        (draining_ || stopping_) &&
        (it == active_.end() || it->second.stop != StopReason::kUser)) {
      stop = StopReason::kShutdown;
    }
  }
  if (stop == StopReason::kShutdown) {
    // Stopped by this replica going away, not by anyone's wish: the job
    // goes back to the queue for another replica or the next start.
    (void)store_->Release(done.id, done.replica, done.attempt);
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_.erase(done.id);
    }
    ++replica_counters_.handed_back;
    LogEvent("job_handed_back", {{"job", done.id},
                                 {"replica", done.replica},
                                 {"attempt", std::to_string(done.attempt)}});
    auto now = store_->GetAny(done.id);
    if (now.ok()) Notify(*now);
    return;
  }
  bool recorded = false;
  if (stop != StopReason::kLeaseLost) {
    // The outcome must reach the store: retry a store that is briefly away
    // for up to a lease (heartbeats keep the lease meanwhile); a fenced-out
    // write (ABORTED) means another replica holds the job.
    const auto give_up = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(options_.lease_ms);
    for (int attempt = 0;; ++attempt) {
      absl::Status s = store_->Complete(done);
      if (s.ok()) {
        recorded = true;
        break;
      }
      if (absl::IsAborted(s) || std::chrono::steady_clock::now() >= give_up) {
        if (!absl::IsAborted(s)) {
          LogEvent("job_outcome_unrecorded",
                   {{"job", done.id}, {"error", std::string(s.message())}});
        }
        break;
      }
      std::this_thread::sleep_for(
          std::chrono::milliseconds(100 << std::min(attempt, 4)));
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(done.id);
  }
  if (!recorded) {
    // Another replica holds the job now (or will, when the lease lapses);
    // its record stands.
    LogEvent("job_outcome_discarded",
             {{"job", done.id},
              {"replica", done.replica},
              {"attempt", std::to_string(done.attempt)},
              {"reason", "this replica lost the job's lease"}});
    auto now = store_->GetAny(done.id);
    if (now.ok()) Notify(*now);
    return;
  }
  // A job that never started ran for no time at all.
  const double seconds =
      done.start_ms > 0 ? (done.end_ms - done.start_ms) / 1000.0 : 0.0;
  LogEvent("job_finished", {{"job", done.id},
                            {"tenant", done.tenant},
                            {"state", JobStateName(done.state)},
                            {"replica", done.replica},
                            {"attempt", std::to_string(done.attempt)},
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
  MS_ASSIGN_OR_RETURN(JobRecord r, store_->Get(tenant, id));
  return Shown(std::move(r));
}

absl::StatusOr<Page<JobRecord>> JobManager::List(
    const std::string& tenant, std::optional<JobState> state,
    const PageRequest& page) const {
  // Queued and running jobs carry their live progress.
  MS_ASSIGN_OR_RETURN(Page<JobRecord> out, store_->List(tenant, state, page));
  std::lock_guard<std::mutex> lock(mu_);
  for (JobRecord& j : out.items) {
    j = Shown(std::move(j));
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
  MS_RETURN_IF_ERROR(store_->Get(tenant, id).status());
  // Queued: cancelled in the store at once. Running anywhere: marked, and
  // the replica that runs it stops at its next heartbeat (about a second)
  // or here, now, when that is this replica.
  MS_ASSIGN_OR_RETURN(bool cancelled_now, store_->RequestCancel(tenant, id));
  if (cancelled_now) {
    MS_ASSIGN_OR_RETURN(JobRecord j, store_->Get(tenant, id));
    LogEvent("job_finished", {{"job", id},
                              {"tenant", tenant},
                              {"state", JobStateName(j.state)},
                              {"seconds", "0.000"},
                              {"error", j.error_message}});
    Notify(j);
    if (options_.on_finished) options_.on_finished(j);
    return j;
  }
  std::shared_ptr<WorkTicket> ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end() && it->second.record.tenant == tenant) {
      it->second.stop = StopReason::kUser;
      ticket = it->second.ticket;
    }
  }
  // Not under mu_: abandoning a queued item takes it.
  if (ticket != nullptr) ticket->Cancel();
  return Get(tenant, id);
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
  // Read from the store outside the lock (it may be slow); a job held here
  // is snapshotted and registered under one lock, so every later event is
  // at least as new as the snapshot.
  MS_ASSIGN_OR_RETURN(JobRecord now, store_->Get(tenant, id));
  now = Shown(std::move(now));
  uint64_t sub;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = active_.find(id);
    if (it != active_.end() && it->second.record.tenant == tenant) {
      now = it->second.record;
    } else if (!IsFinal(now.state)) {
      // Held by another replica (or queued): followed through the store.
      remote_seen_[id] = now;
    }
    sub = next_listener_++;
    listeners_[sub] = {id, fn};
  }
  fn(now);
  return sub;
}

void JobManager::Unsubscribe(uint64_t subscription) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = listeners_.find(subscription);
  if (it == listeners_.end()) return;
  const std::string id = it->second.first;
  listeners_.erase(it);
  for (const auto& [sub, entry] : listeners_) {
    if (entry.first == id) return;
  }
  remote_seen_.erase(id);
}

bool JobManager::EndWait::Stop() {
  uint64_t sub = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ended_) return false;
    ended_ = true;
    sub = subscription_;
  }
  if (sub != 0) jobs_->Unsubscribe(sub);
  return true;
}

absl::StatusOr<std::shared_ptr<JobManager::EndWait>> JobManager::FollowToEnd(
    const std::string& tenant, const std::string& id, Listener on_change,
    Listener on_end) {
  auto wait = std::make_shared<EndWait>();
  wait->jobs_ = this;
  auto listener = [wait, on_change, on_end](const JobRecord& r) {
    if (on_change) on_change(r);
    if (!IsFinal(r.state)) return;
    // The first final record ends the wait (Stop() unsubscribes, or leaves
    // it to the code below when the subscription is not known yet).
    if (wait->Stop()) on_end(r);
  };
  MS_ASSIGN_OR_RETURN(uint64_t sub, Subscribe(tenant, id, listener));
  bool ended;
  {
    std::lock_guard<std::mutex> lock(wait->mu_);
    wait->subscription_ = sub;
    ended = wait->ended_;
  }
  if (ended) Unsubscribe(sub);
  return wait;
}

absl::StatusOr<std::shared_ptr<JobManager::EndWait>> JobManager::FollowEvents(
    const std::string& tenant, const std::string& id, int64_t after,
    EventListener on_event, Listener on_change, Listener on_end) {
  // The log in the store is the one truth; records only say how far it
  // goes. Pulls are serialised, so each event goes out once, in order.
  struct Cursor {
    std::mutex mu;
    int64_t last = 0;
  };
  auto cursor = std::make_shared<Cursor>();
  cursor->last = after;
  auto pull = [this, id, cursor, on_event](int64_t upto) {
    std::lock_guard<std::mutex> lock(cursor->mu);
    if (upto <= cursor->last) return;
    auto events = store_->Events(id, cursor->last);
    if (!events.ok()) return;  // the next record pulls again
    for (const JobLogEntry& e : *events) {
      cursor->last = e.seq;
      on_event(e);
    }
  };
  return FollowToEnd(
      tenant, id,
      [pull, on_change](const JobRecord& r) {
        if (on_change) on_change(r);
        pull(r.events);
      },
      [pull, on_end](const JobRecord& r) {
        pull(std::numeric_limits<int64_t>::max());
        on_end(r);
      });
}

void JobManager::PollRemote() {
  std::vector<std::string> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, seen] : remote_seen_) {
      if (active_.count(id) == 0) ids.push_back(id);
    }
  }
  for (const std::string& id : ids) {
    auto now = store_->GetAny(id);
    if (!now.ok()) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = remote_seen_.find(id);
      if (it == remote_seen_.end() || active_.count(id) > 0) continue;
      const JobRecord& was = it->second;
      if (was.state == now->state && was.tensors_done == now->tensors_done &&
          was.phase == now->phase && was.phase_done == now->phase_done &&
          was.events == now->events && was.attempt == now->attempt &&
          was.replica == now->replica) {
        continue;
      }
      if (IsFinal(now->state)) {
        remote_seen_.erase(it);
      } else {
        it->second = *now;
      }
    }
    Notify(*now);
  }
}

void JobManager::Notify(const JobRecord& record) {
  const JobRecord r = Shown(record);
  std::vector<Listener> fns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [sub, entry] : listeners_) {
      if (entry.first == r.id) fns.push_back(entry.second);
    }
    // Watchers of a job that went back to the queue follow it through the
    // store until some replica (maybe this one) holds it again.
    if (!IsFinal(r.state) && active_.count(r.id) == 0 && !fns.empty()) {
      remote_seen_[r.id] = r;
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
  if (!request.stages.empty()) {
    return absl::InvalidArgumentError(
        "an analysis takes one merge; this request holds several (analyze "
        "each on its own)");
  }
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
  dispatcher_->StopClaiming();
  // Running jobs get `grace`; those stopped then are handed back (Finish).
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
  // At least once a minute: sweeps' kept scratch goes after kScratchIdle.
  const auto period = std::chrono::milliseconds(
      std::clamp<int64_t>(options_.retention_ms / 10, 1000, 60 * 1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    ExpireOldJobs();
    scratch_pool_->DropIdle(kScratchIdle);
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
