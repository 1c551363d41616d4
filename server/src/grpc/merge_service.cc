#include "grpc/merge_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpc/proto_convert.h"
#include "grpc/status_util.h"

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

}  // namespace mergeserve
