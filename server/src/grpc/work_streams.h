// The two streams that follow sweep and evaluation jobs: Sweep and
// Evaluate. Each validates and submits its job on the control executor
// (or finds the tenant's job for the same request), then follows it on any
// replica without holding a thread: the job's record, the events it logs
// (replayed from the start, then as they come), and its result, which ends
// the stream. A client that leaves stops following; the job runs on.
#ifndef MERGESERVE_GRPC_WORK_STREAMS_H_
#define MERGESERVE_GRPC_WORK_STREAMS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpc/event_stream_reactor.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/v1/merge.grpc.pb.h"

namespace mergeserve {

using EvaluateEmitter = EventStreamReactor<v1::EvaluateEvent>::Emitter;
using SweepEmitter = EventStreamReactor<v1::SweepEvent>::Emitter;

// How a stream shows its job.
template <typename Event>
struct JobStreamView {
  // The record, when its state changed (`changed`) or its progress did.
  std::function<void(const JobRecord& r, bool changed)> on_record;
  // A logged event; an error ends the stream.
  std::function<absl::StatusOr<Event>(const JobLogEntry&)> on_entry;
  // The result of a job that succeeded, as the last event.
  std::function<absl::StatusOr<Event>(const JobRecord&)> on_result;
};

// Follows `job` into `out` until it ends.
template <typename Event>
void FollowJobStream(
    JobManager& jobs, const std::string& tenant, const std::string& id,
    JobStreamView<Event> view,
    std::shared_ptr<typename EventStreamReactor<Event>::Emitter> out) {
  auto last_state = std::make_shared<std::atomic<int>>(0);
  auto wait = jobs.FollowEvents(
      tenant, id, 0,
      [view, out](const JobLogEntry& e) {
        auto ev = view.on_entry(e);
        if (ev.ok()) {
          out->Emit(*ev);
        } else {
          out->Done(ev.status());
        }
      },
      [view, last_state](const JobRecord& r) {
        const int state = static_cast<int>(r.state);
        view.on_record(r, last_state->exchange(state) != state);
      },
      [view, out](const JobRecord& r) {
        if (r.state != JobState::kSucceeded) {
          const auto code = static_cast<absl::StatusCode>(r.error_code);
          out->Done(absl::Status(
              code == absl::StatusCode::kOk ? absl::StatusCode::kUnknown : code,
              absl::StrCat("job '", r.id, "' ", JobStateName(r.state), ": ",
                           r.error_message)));
          return;
        }
        auto ev = view.on_result(r);
        if (ev.ok()) out->Emit(*ev);
        out->Done(ev.status());
      });
  if (!wait.ok()) {
    out->Done(wait.status());
    return;
  }
  // The client left: stop following, and end the call (unless the job's
  // end is being sent, which ends it).
  if (!(*wait)->ended()) {
    out->OnCancel([w = *wait, out] {
      if (w->Stop()) out->Done(absl::CancelledError("the client went away"));
    });
  }
}

void StartEvaluate(JobManager& jobs, BackgroundExecutor& control,
                   const std::string& tenant, const v1::EvaluateRequest& req,
                   std::shared_ptr<EvaluateEmitter> out);

void StartSweep(JobManager& jobs, BackgroundExecutor& control,
                const ConfigLimits& limits, const std::string& tenant,
                const v1::SweepRequest& req, std::shared_ptr<SweepEmitter> out);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_WORK_STREAMS_H_
