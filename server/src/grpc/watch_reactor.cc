#include "grpc/watch_reactor.h"

#include "grpc/proto_convert.h"
#include "grpc/status_util.h"

namespace mergeserve {

WatchReactor::WatchReactor(JobManager& jobs, Caller caller, StreamSlot slot,
                           const std::string& id)
    : jobs_(jobs), caller_(std::move(caller)), slot_(std::move(slot)) {
  state_ = std::make_shared<Shared>();
  state_->reactor = this;
  auto shared = state_;
  auto sub =
      jobs_.Subscribe(caller_.tenant(), id, [shared](const JobRecord& r) {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (shared->reactor == nullptr) return;
        shared->reactor->Offer(r);
      });
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!sub.ok()) {
    finished_ = true;
    End(ToGrpcStatus(sub.status()));
    return;
  }
  subscription_ = *sub;
}

void WatchReactor::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(state_->mu);
  writing_ = false;
  if (!ok) {
    if (!finished_) {
      finished_ = true;
      End(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
    }
    return;
  }
  if (last_sent_final_) {
    finished_ = true;
    End(grpc::Status::OK);
    return;
  }
  SendPendingLocked();
}

void WatchReactor::OnCancel() {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!finished_ && !writing_) {
    finished_ = true;
    End(grpc::Status::CANCELLED);
  }
}

void WatchReactor::OnDone() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->reactor = nullptr;
  }
  if (subscription_ != 0) jobs_.Unsubscribe(subscription_);
  delete this;
}

void WatchReactor::Offer(const JobRecord& r) {
  if (finished_ || last_sent_final_) return;
  // Events may arrive slightly out of order across threads; the end of a
  // job is never replaced by an older progress event.
  if (pending_ && IsFinal(pending_->state)) return;
  pending_ = r;
  if (!writing_) SendPendingLocked();
}

void WatchReactor::SendPendingLocked() {
  if (!pending_ || finished_) return;
  event_.Clear();
  ToProto(*pending_, event_.mutable_job());
  last_sent_final_ = IsFinal(pending_->state);
  pending_.reset();
  writing_ = true;
  StartWrite(&event_);
}

void WatchReactor::End(const grpc::Status& status) {
  slot_.Release();
  Finish(status);
}

}  // namespace mergeserve
