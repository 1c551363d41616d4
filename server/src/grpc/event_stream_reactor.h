// A server stream fed by a long computation (evaluation, sweeps): the
// producer runs on its own thread and emits events; the reactor keeps one
// write in flight and queues the rest (progress events replace an unsent
// progress event, so a slow reader gets fewer, fresher ones). The call ends
// with the producer's status once every event is written. A cancelled call
// asks the producer to stop (emit returns false, cancelled() turns true).
#ifndef MERGESERVE_GRPC_EVENT_STREAM_REACTOR_H_
#define MERGESERVE_GRPC_EVENT_STREAM_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "grpc/status_util.h"

namespace mergeserve {

template <typename Event>
class EventStreamReactor : public grpc::ServerWriteReactor<Event> {
 public:
  class Emitter {
   public:
    // Queues an event; `progress` events may be replaced by a newer one.
    bool Emit(const Event& e, bool progress = false) {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->cancelled) return false;
      if (progress && !state_->queue.empty() && state_->queue.back().second) {
        state_->queue.back().first = e;
      } else {
        state_->queue.push_back({e, progress});
      }
      if (state_->reactor != nullptr) state_->reactor->PumpLocked();
      return true;
    }
    const std::atomic<bool>* cancelled() const { return &state_->cancelled; }

   private:
    friend class EventStreamReactor;
    explicit Emitter(std::shared_ptr<typename EventStreamReactor::State> s)
        : state_(std::move(s)) {}
    std::shared_ptr<typename EventStreamReactor::State> state_;
  };
  using Producer = std::function<absl::Status(Emitter&)>;

  explicit EventStreamReactor(Producer producer)
      : state_(std::make_shared<State>()) {
    state_->reactor = this;
    std::thread([state = state_, producer = std::move(producer)] {
      Emitter emitter(state);
      absl::Status status = producer(emitter);
      std::lock_guard<std::mutex> lock(state->mu);
      state->done = true;
      state->status = state->cancelled
                          ? absl::CancelledError("the client went away")
                          : status;
      if (state->reactor != nullptr) state->reactor->PumpLocked();
    }).detach();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->writing = false;
    if (!ok) state_->cancelled = true;
    PumpLocked();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cancelled = true;
    PumpLocked();
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
    std::mutex mu;
    EventStreamReactor* reactor = nullptr;
    std::deque<std::pair<Event, bool>> queue;
    std::atomic<bool> cancelled{false};
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
      this->Finish(ToGrpcStatus(state_->status));
    }
  }

  std::shared_ptr<State> state_;
  Event current_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_EVENT_STREAM_REACTOR_H_
