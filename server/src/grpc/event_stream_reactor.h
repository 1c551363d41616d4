// A server stream fed from outside gRPC's threads: by a work item on the
// executor (evaluation, sweep) or by job listeners. Producers emit events
// through a shared Emitter and call Done(status) once when nothing more will
// come; the reactor keeps one write in flight and queues the rest (progress
// events replace an unsent progress event, so a slow reader gets fewer,
// fresher ones), then finishes with that status. A cancelled call tells the
// producer (cancelled() turns true, on_cancel runs). The reactor owns no
// thread.
#ifndef MERGESERVE_GRPC_EVENT_STREAM_REACTOR_H_
#define MERGESERVE_GRPC_EVENT_STREAM_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "grpc/authorizer.h"
#include "grpc/status_util.h"

namespace mergeserve {

template <typename Event>
class EventStreamReactor : public grpc::ServerWriteReactor<Event> {
 private:
  struct State;

 public:
  class Emitter {
   public:
    explicit Emitter(std::shared_ptr<State> s) : state_(std::move(s)) {}
    // Queues an event; `progress` events may be replaced by a newer one.
    bool Emit(const Event& e, bool progress = false) {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->cancelled || state_->done) return false;
      if (progress && !state_->queue.empty() && state_->queue.back().second) {
        state_->queue.back().first = e;
      } else {
        state_->queue.push_back({e, progress});
      }
      if (state_->reactor != nullptr) state_->reactor->PumpLocked();
      return true;
    }
    // No more events; the call ends with `status` once the queue is sent.
    // Only the first call counts.
    void Done(const absl::Status& status) {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->done) return;
      state_->done = true;
      state_->status = state_->cancelled
                           ? absl::CancelledError("the client went away")
                           : status;
      if (state_->reactor != nullptr) state_->reactor->PumpLocked();
    }
    const std::atomic<bool>* cancelled() const { return &state_->cancelled; }
    bool done() const {
      std::lock_guard<std::mutex> lock(state_->mu);
      return state_->done;
    }
    // Runs when the client cancels (before Done), e.g. to cancel the work.
    void OnCancel(std::function<void()> fn) {
      bool now = false;
      {
        std::lock_guard<std::mutex> lock(state_->mu);
        if (state_->cancelled) {
          now = true;
        } else {
          state_->on_cancel = std::move(fn);
        }
      }
      if (now && fn) fn();
    }

   private:
    std::shared_ptr<State> state_;
  };

  // `resource` names what the stream is about in the audit log.
  EventStreamReactor(Authorizer& auth, Caller caller, StreamSlot slot,
                     std::string resource)
      : auth_(auth),
        caller_(std::move(caller)),
        slot_(std::move(slot)),
        resource_(std::move(resource)),
        state_(std::make_shared<State>()) {
    state_->reactor = this;
  }
  std::shared_ptr<Emitter> emitter() {
    return std::make_shared<Emitter>(state_);
  }

  void OnWriteDone(bool ok) override {
    std::function<void()> cancel;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->writing = false;
      if (!ok && !state_->cancelled) {
        state_->cancelled = true;
        cancel = std::move(state_->on_cancel);
      }
      PumpLocked();
    }
    if (cancel) cancel();
  }
  void OnCancel() override {
    std::function<void()> cancel;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (!state_->cancelled) {
        state_->cancelled = true;
        cancel = std::move(state_->on_cancel);
      }
      PumpLocked();
    }
    if (cancel) cancel();
  }
  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct State {
    mutable std::mutex mu;
    EventStreamReactor* reactor = nullptr;
    std::deque<std::pair<Event, bool>> queue;
    std::atomic<bool> cancelled{false};
    std::function<void()> on_cancel;
    bool writing = false;
    bool done = false;
    bool finished = false;
    absl::Status status;
  };

  // With state_->mu held: start the next write, or finish when all is sent.
  void PumpLocked() {
    if (state_->finished || state_->writing) return;
    if (!state_->cancelled && !state_->queue.empty()) {
      current_ = state_->queue.front().first;
      state_->queue.pop_front();
      state_->writing = true;
      this->StartWrite(&current_);
      return;
    }
    if (state_->done) {
      state_->finished = true;
      auth_.Finished(caller_, resource_, state_->status);
      slot_.Release();
      this->Finish(ToGrpcStatus(state_->status));
    }
  }

  Authorizer& auth_;
  Caller caller_;
  StreamSlot slot_;
  std::string resource_;
  std::shared_ptr<State> state_;
  Event current_;
};

// A stream refused before it began.
template <typename Event>
class RefusedStream : public grpc::ServerWriteReactor<Event> {
 public:
  explicit RefusedStream(const absl::Status& s) {
    this->Finish(ToGrpcStatus(s));
  }
  void OnDone() override { delete this; }
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_EVENT_STREAM_REACTOR_H_
