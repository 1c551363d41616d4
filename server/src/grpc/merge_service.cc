#include "grpc/merge_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpc/event_stream_reactor.h"
#include "grpc/proto_convert.h"
#include "grpc/status_util.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/jobs/data_aware_merge.h"
#include "mergeserve/jobs/sweep_runner.h"
#include "mergeserve/jobs/task_evaluator.h"

namespace mergeserve {
namespace {

constexpr int kMaxChunk = 1 << 20;

// Streams a job's records: the newest unsent one replaces older unsent ones,
// so a slow reader gets fewer, fresher events.
class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  WatchReactor(JobManager& jobs, const std::string& id) : jobs_(jobs) {
    state_ = std::make_shared<Shared>();
    state_->reactor = this;
    auto shared = state_;
    auto sub = jobs_.Subscribe(id, [shared](const JobRecord& r) {
      std::lock_guard<std::mutex> lock(shared->mu);
      if (shared->reactor == nullptr) return;
      shared->reactor->Offer(r);
    });
    if (!sub.ok()) {
      std::lock_guard<std::mutex> lock(state_->mu);
      finished_ = true;
      Finish(ToGrpcStatus(sub.status()));
      return;
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    subscription_ = *sub;
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    writing_ = false;
    if (!ok) {
      if (!finished_) {
        finished_ = true;
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
      }
      return;
    }
    if (last_sent_final_) {
      finished_ = true;
      Finish(grpc::Status::OK);
      return;
    }
    SendPendingLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!finished_ && !writing_) {
      finished_ = true;
      Finish(grpc::Status::CANCELLED);
    }
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->reactor = nullptr;
    }
    if (subscription_ != 0) jobs_.Unsubscribe(subscription_);
    delete this;
  }

 private:
  struct Shared {
    std::mutex mu;
    WatchReactor* reactor = nullptr;
  };

  // Called with state_->mu held.
  void Offer(const JobRecord& r) {
    if (finished_ || last_sent_final_) return;
    // Events may arrive slightly out of order across threads; the end of a
    // job is never replaced by an older progress event.
    if (pending_ && IsFinal(pending_->state)) return;
    pending_ = r;
    if (!writing_) SendPendingLocked();
  }

  void SendPendingLocked() {
    if (!pending_ || finished_) return;
    event_.Clear();
    ToProto(*pending_, event_.mutable_job());
    last_sent_final_ = IsFinal(pending_->state);
    pending_.reset();
    writing_ = true;
    StartWrite(&event_);
  }

  JobManager& jobs_;
  std::shared_ptr<Shared> state_;
  uint64_t subscription_ = 0;
  std::optional<JobRecord> pending_;
  v1::JobEvent event_;
  bool writing_ = false;
  bool last_sent_final_ = false;
  bool finished_ = false;
};

// Sends a result's files chunk by chunk; the next chunk is read only after
// the previous one was written.
class DownloadReactor : public grpc::ServerWriteReactor<v1::DownloadChunk> {
 public:
  DownloadReactor(JobManager& jobs, const v1::DownloadMergeResultRequest& req,
                  std::function<void(int64_t)> on_bytes)
      : on_bytes_(std::move(on_bytes)) {
    chunk_bytes_ = req.chunk_bytes() > 0
                       ? std::min(req.chunk_bytes(), kMaxChunk)
                       : kMaxChunk;
    auto job = jobs.Get(req.id());
    if (!job.ok()) {
      Finish(ToGrpcStatus(job.status()));
      return;
    }
    if (job->state != JobState::kSucceeded) {
      Finish(
          grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                       absl::StrCat("job '", req.id(),
                                    "' has no result (it is not SUCCEEDED)")));
      return;
    }
    dir_ = job->result_dir;
    for (const ResultFileInfo& f : job->files) {
      if (req.file().empty() || f.name == req.file()) files_.push_back(f);
    }
    if (files_.empty()) {
      Finish(grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("job '", req.id(), "' has no file '", req.file(), "'")));
      return;
    }
    offset_ = req.offset();
    if (offset_ < 0 ||
        (!req.file().empty() && offset_ > files_[0].size_bytes)) {
      Finish(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                          absl::StrCat("offset ", offset_, " is outside file '",
                                       files_[0].name, "'")));
      return;
    }
    if (req.file().empty()) offset_ = 0;
    Next();
  }

  ~DownloadReactor() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    while (index_ < files_.size()) {
      const ResultFileInfo& f = files_[index_];
      if (fd_ < 0) {
        fd_ = ::open((dir_ + "/" + f.name).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd_ < 0) {
          Finish(
              grpc::Status(grpc::StatusCode::DATA_LOSS,
                           absl::StrCat("result file ", f.name, " is gone")));
          return;
        }
      }
      if (offset_ < f.size_bytes ||
          (offset_ == 0 && f.size_bytes == 0 && !sent_empty_)) {
        const int64_t n =
            std::min<int64_t>(chunk_bytes_, f.size_bytes - offset_);
        chunk_.Clear();
        std::string* data = chunk_.mutable_data();
        data->resize(static_cast<size_t>(n));
        int64_t got = 0;
        while (got < n) {
          const ssize_t r =
              ::pread(fd_, data->data() + got, static_cast<size_t>(n - got),
                      static_cast<off_t>(offset_ + got));
          if (r <= 0) {
            Finish(
                grpc::Status(grpc::StatusCode::DATA_LOSS,
                             absl::StrCat("cannot read result file ", f.name)));
            return;
          }
          got += r;
        }
        chunk_.set_file(f.name);
        chunk_.set_offset(offset_);
        chunk_.set_file_size(f.size_bytes);
        chunk_.set_file_sha256(f.sha256);
        offset_ += n;
        sent_empty_ = f.size_bytes == 0;
        if (on_bytes_) on_bytes_(n);
        StartWrite(&chunk_);
        return;
      }
      ::close(fd_);
      fd_ = -1;
      ++index_;
      offset_ = 0;
      sent_empty_ = false;
    }
    Finish(grpc::Status::OK);
  }

  std::function<void(int64_t)> on_bytes_;
  std::string dir_;
  std::vector<ResultFileInfo> files_;
  size_t index_ = 0;
  int64_t offset_ = 0;
  int chunk_bytes_ = kMaxChunk;
  int fd_ = -1;
  bool sent_empty_ = false;
  v1::DownloadChunk chunk_;
};

}  // namespace

grpc::ServerUnaryReactor* MergeServiceImpl::CreateMergeJob(
    grpc::CallbackServerContext* ctx, const v1::CreateMergeJobRequest* request,
    v1::MergeJob* response) {
  auto* reactor = ctx->DefaultReactor();
  auto yaml = SpecToYaml(request->spec());
  if (!yaml.ok()) {
    reactor->Finish(ToGrpcStatus(yaml.status()));
    return reactor;
  }
  auto job = jobs_.Submit(*yaml);
  if (job.ok()) ToProto(*job, response);
  reactor->Finish(ToGrpcStatus(job.status()));
  return reactor;
}

grpc::ServerUnaryReactor* MergeServiceImpl::GetMergeJob(
    grpc::CallbackServerContext* ctx, const v1::GetMergeJobRequest* request,
    v1::MergeJob* response) {
  auto* reactor = ctx->DefaultReactor();
  auto job = jobs_.Get(request->id());
  if (job.ok()) ToProto(*job, response);
  reactor->Finish(ToGrpcStatus(job.status()));
  return reactor;
}

grpc::ServerUnaryReactor* MergeServiceImpl::ListMergeJobs(
    grpc::CallbackServerContext* ctx, const v1::ListMergeJobsRequest* request,
    v1::ListMergeJobsResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  std::optional<JobState> state;
  if (request->state() != v1::JOB_STATE_UNSPECIFIED) {
    auto s = JobStateFromProto(request->state());
    if (!s.ok()) {
      reactor->Finish(ToGrpcStatus(s.status()));
      return reactor;
    }
    state = *s;
  }
  auto jobs = jobs_.List(state);
  if (jobs.ok()) {
    for (const JobRecord& j : *jobs) ToProto(j, response->add_jobs());
  }
  reactor->Finish(ToGrpcStatus(jobs.status()));
  return reactor;
}

grpc::ServerUnaryReactor* MergeServiceImpl::CancelMergeJob(
    grpc::CallbackServerContext* ctx, const v1::CancelMergeJobRequest* request,
    v1::MergeJob* response) {
  auto* reactor = ctx->DefaultReactor();
  auto job = jobs_.Cancel(request->id());
  if (job.ok()) ToProto(*job, response);
  reactor->Finish(ToGrpcStatus(job.status()));
  return reactor;
}

grpc::ServerUnaryReactor* MergeServiceImpl::AnalyzeMerge(
    grpc::CallbackServerContext* ctx, const v1::AnalyzeMergeRequest* request,
    v1::AnalyzeMergeResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto yaml = SpecToYaml(request->spec());
  if (!yaml.ok()) {
    reactor->Finish(ToGrpcStatus(yaml.status()));
    return reactor;
  }
  // A full streaming pass over the checkpoints: off the gRPC thread.
  std::thread([this, reactor, response, text = *yaml] {
    auto d = jobs_.Analyze(text);
    if (d.ok()) ToProto(*d, response);
    reactor->Finish(ToGrpcStatus(d.status()));
  }).detach();
  return reactor;
}

grpc::ServerWriteReactor<v1::JobEvent>* MergeServiceImpl::WatchMergeJob(
    grpc::CallbackServerContext* ctx, const v1::WatchMergeJobRequest* request) {
  return new WatchReactor(jobs_, request->id());
}

grpc::ServerWriteReactor<v1::DownloadChunk>*
MergeServiceImpl::DownloadMergeResult(
    grpc::CallbackServerContext* ctx,
    const v1::DownloadMergeResultRequest* request) {
  return new DownloadReactor(jobs_, *request, hooks_.on_bytes_streamed);
}

namespace {

// Waits for a job to end, streaming its records; returns the final one.
absl::StatusOr<JobRecord> AwaitJob(
    JobManager& jobs, const std::string& id,
    EventStreamReactor<v1::EvaluateEvent>::Emitter& out) {
  struct Latest {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<JobRecord> record;
  };
  auto latest = std::make_shared<Latest>();
  auto sub = jobs.Subscribe(id, [latest](const JobRecord& r) {
    std::lock_guard<std::mutex> lock(latest->mu);
    latest->record = r;
    latest->cv.notify_all();
  });
  if (!sub.ok()) return sub.status();
  JobRecord now;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(latest->mu);
      latest->cv.wait_for(lock, std::chrono::milliseconds(200),
                          [&] { return latest->record.has_value(); });
      if (!latest->record) {
        if (out.cancelled()->load()) break;
        continue;
      }
      now = *latest->record;
      latest->record.reset();
    }
    v1::EvaluateEvent e;
    ToProto(now, e.mutable_job());
    out.Emit(e, /*progress=*/!IsFinal(now.state));
    if (IsFinal(now.state) || out.cancelled()->load()) break;
  }
  jobs.Unsubscribe(*sub);
  if (out.cancelled()->load()) return absl::CancelledError("cancelled");
  if (now.state != JobState::kSucceeded) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job '", id, "' has no result to evaluate: ",
        now.error_message.empty() ? "it did not succeed" : now.error_message));
  }
  return now;
}

}  // namespace

grpc::ServerWriteReactor<v1::EvaluateEvent>* MergeServiceImpl::Evaluate(
    grpc::CallbackServerContext* ctx, const v1::EvaluateRequest* request) {
  JobManager& jobs = jobs_;
  const v1::EvaluateRequest req = *request;
  using Reactor = EventStreamReactor<v1::EvaluateEvent>;
  return new Reactor([&jobs, req](Reactor::Emitter& out) -> absl::Status {
    const auto start = std::chrono::steady_clock::now();
    EvalTarget target;
    target.tasks.assign(req.tasks().begin(), req.tasks().end());
    target.batch_size = req.batch_size() > 0 ? req.batch_size() : 256;
    target.max_examples = std::max<int64_t>(0, req.max_examples());
    if (req.target_case() == v1::EvaluateRequest::kJobId) {
      MS_ASSIGN_OR_RETURN(JobRecord job, AwaitJob(jobs, req.job_id(), out));
      MS_ASSIGN_OR_RETURN(MergeConfig config,
                          MergeConfig::FromYaml(job.config_yaml, ""));
      target.preferred_heads = ExpertsOf(config);
      target.weights_dir = job.result_dir;
      target.merged_regex = MergedTensorsRegex(config);
    } else if (req.target_case() == v1::EvaluateRequest::kCheckpoint) {
      MS_ASSIGN_OR_RETURN(CheckpointRecord c,
                          jobs.registry()->Get(req.checkpoint(), false));
      target.checkpoint = c.name;
      target.weights_dir = c.path;
    } else {
      return absl::InvalidArgumentError(
          "evaluate needs a job_id or a checkpoint");
    }
    TaskEvaluator evaluator(jobs.registry(), jobs.options().device);
    MS_ASSIGN_OR_RETURN(
        auto tasks,
        evaluator.Run(
            target,
            [&](const std::string& task, int64_t done, int64_t total) {
              v1::EvaluateEvent e;
              e.mutable_progress()->set_task(task);
              e.mutable_progress()->set_done(done);
              e.mutable_progress()->set_total(total);
              out.Emit(e, /*progress=*/true);
            },
            [&](const TaskMetrics& m) {
              v1::EvaluateEvent e;
              ToProto(m, e.mutable_task());
              out.Emit(e);
            }));
    v1::EvaluateEvent e;
    for (const TaskMetrics& m : tasks) {
      ToProto(m, e.mutable_summary()->add_tasks());
    }
    e.mutable_summary()->set_mean_accuracy(MeanAccuracy(tasks));
    e.mutable_summary()->set_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
    out.Emit(e);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::SweepEvent>* MergeServiceImpl::Sweep(
    grpc::CallbackServerContext* ctx, const v1::SweepRequest* request) {
  JobManager& jobs = jobs_;
  const v1::SweepRequest req = *request;
  using Reactor = EventStreamReactor<v1::SweepEvent>;
  return new Reactor([&jobs, req](Reactor::Emitter& out) -> absl::Status {
    MS_ASSIGN_OR_RETURN(std::string yaml, SpecToYaml(req.spec()));
    SweepGrid grid;
    if (req.densities_size() > 0) {
      grid.push_back(
          {"density", {req.densities().begin(), req.densities().end()}});
    }
    for (const v1::SweepAxis& a : req.axes()) {
      grid.push_back({a.parameter(), {a.values().begin(), a.values().end()}});
    }
    if (req.lambdas_size() > 0) {
      grid.push_back({"lambda", {req.lambdas().begin(), req.lambdas().end()}});
    }
    SweepOptions o;
    o.tasks.assign(req.tasks().begin(), req.tasks().end());
    o.max_examples = std::max<int64_t>(0, req.max_examples());
    o.cancelled = out.cancelled();
    o.on_phase = [&](const std::string& phase) {
      v1::SweepEvent e;
      e.set_phase(phase);
      out.Emit(e, /*progress=*/true);
    };
    o.on_point = [&](const SweepPoint& p) {
      v1::SweepEvent e;
      ToProto(p, e.mutable_point());
      out.Emit(e);
    };
    MS_ASSIGN_OR_RETURN(SweepSummary summary, RunSweep(jobs, yaml, grid, o));
    v1::SweepEvent e;
    ToProto(summary, e.mutable_summary());
    out.Emit(e);
    return absl::OkStatus();
  });
}

}  // namespace mergeserve
