// The two streams fed by work items: Evaluate (after waiting, without a
// thread, for the job it evaluates) and Sweep. Each validates its request on
// the control executor, then queues the work on the JobManager's executor
// under the memory budget; the work emits into the call's EventStreamReactor
// and ends it.
#ifndef MERGESERVE_GRPC_WORK_STREAMS_H_
#define MERGESERVE_GRPC_WORK_STREAMS_H_

#include <memory>
#include <string>

#include "grpc/event_stream_reactor.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/v1/merge.grpc.pb.h"

namespace mergeserve {

using EvaluateEmitter = EventStreamReactor<v1::EvaluateEvent>::Emitter;
using SweepEmitter = EventStreamReactor<v1::SweepEvent>::Emitter;

// Queues `item` for the stream behind `out`: the stream ends with the
// reason when the item cannot be queued or never starts, and a client that
// leaves cancels it.
template <typename Event>
void QueueStreamWork(
    JobManager& jobs, WorkItem item,
    std::shared_ptr<typename EventStreamReactor<Event>::Emitter> out) {
  item.abandon = [out](const absl::Status& why) { out->Done(why); };
  auto ticket = jobs.RunWork(std::move(item));
  if (!ticket.ok()) {
    out->Done(ticket.status());
    return;
  }
  out->OnCancel([t = *ticket] { t->Cancel(); });
}

void StartEvaluate(JobManager& jobs, BackgroundExecutor& control,
                   const std::string& tenant, const v1::EvaluateRequest& req,
                   std::shared_ptr<EvaluateEmitter> out);

void StartSweep(JobManager& jobs, BackgroundExecutor& control,
                const ConfigLimits& limits, const std::string& tenant,
                const v1::SweepRequest& req, std::shared_ptr<SweepEmitter> out);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_WORK_STREAMS_H_
