#include "grpc/download_reactor.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "grpc/status_util.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {

DownloadReactor::DownloadReactor(JobManager& jobs, Caller caller,
                                 StreamSlot slot,
                                 const v1::DownloadMergeResultRequest& req,
                                 std::function<void(int64_t)> on_bytes)
    : slot_(std::move(slot)), on_bytes_(std::move(on_bytes)) {
  chunk_bytes_ = req.chunk_bytes() > 0 ? std::min(req.chunk_bytes(), kMaxChunk)
                                       : kMaxChunk;
  auto job = jobs.Get(caller.tenant(), req.id());
  if (!job.ok()) {
    End(ToGrpcStatus(job.status()));
    return;
  }
  if (job->state != JobState::kSucceeded) {
    End(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                     absl::StrCat("job '", req.id(),
                                  "' has no result (it is not SUCCEEDED)")));
    return;
  }
  if (job->kind != kMergeJob) {
    // Analyses, sweeps and evaluations return their results in their calls.
    End(grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("job '", req.id(), "' is ",
                     job->kind[0] == 'a' || job->kind[0] == 'e' ? "an " : "a ",
                     job->kind, " job; only merge jobs have files")));
    return;
  }
  dir_ = job->result_dir;
  for (const ResultFileInfo& f : job->files) {
    if (req.file().empty() || f.name == req.file()) files_.push_back(f);
  }
  if (files_.empty()) {
    End(grpc::Status(grpc::StatusCode::NOT_FOUND,
                     absl::StrCat("job '", req.id(), "' has no file '",
                                  Abbreviate(req.file()), "'")));
    return;
  }
  offset_ = req.offset();
  if (offset_ < 0 || (!req.file().empty() && offset_ > files_[0].size_bytes)) {
    End(grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                     absl::StrCat("offset ", offset_, " is outside file '",
                                  files_[0].name, "'")));
    return;
  }
  if (req.file().empty()) offset_ = 0;
  Next();
}

DownloadReactor::~DownloadReactor() {
  if (fd_ >= 0) ::close(fd_);
}

void DownloadReactor::OnWriteDone(bool ok) {
  if (!ok) {
    End(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
    return;
  }
  Next();
}

void DownloadReactor::Next() {
  while (index_ < files_.size()) {
    const ResultFileInfo& f = files_[index_];
    if (fd_ < 0) {
      fd_ = ::open((dir_ + "/" + f.name).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) {
        End(grpc::Status(grpc::StatusCode::DATA_LOSS,
                         absl::StrCat("result file ", f.name, " is gone")));
        return;
      }
    }
    if (offset_ < f.size_bytes ||
        (offset_ == 0 && f.size_bytes == 0 && !sent_empty_)) {
      const int64_t n = std::min<int64_t>(chunk_bytes_, f.size_bytes - offset_);
      chunk_.Clear();
      std::string* data = chunk_.mutable_data();
      data->resize(static_cast<size_t>(n));
      int64_t got = 0;
      while (got < n) {
        const ssize_t r =
            ::pread(fd_, data->data() + got, static_cast<size_t>(n - got),
                    static_cast<off_t>(offset_ + got));
        if (r <= 0) {
          End(grpc::Status(grpc::StatusCode::DATA_LOSS,
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
  End(grpc::Status::OK);
}

void DownloadReactor::End(const grpc::Status& status) {
  slot_.Release();
  Finish(status);
}

}  // namespace mergeserve
