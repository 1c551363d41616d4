#include "grpc/merge_service.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/download_reactor.h"
#include "grpc/event_stream_reactor.h"
#include "grpc/proto_convert.h"
#include "grpc/status_util.h"
#include "grpc/watch_reactor.h"
#include "grpc/work_streams.h"

namespace mergeserve {
namespace {

std::string Method(const char* name) {
  return absl::StrCat("mergeserve.v1.MergeService/", name);
}

}  // namespace

absl::StatusOr<std::pair<Caller, StreamSlot>> MergeServiceImpl::OpenStream(
    grpc::CallbackServerContext* ctx, const char* method,
    const std::string& resource) {
  auto caller = auth_.Authorize(ctx, Method(method));
  if (!caller.ok()) return caller.status();
  auto slot = auth_.AcquireStream(*caller);
  if (!slot.ok()) {
    auth_.Finished(*caller, resource, slot.status());
    return slot.status();
  }
  return std::make_pair(*caller, *std::move(slot));
}

grpc::ServerUnaryReactor* MergeServiceImpl::CreateMergeJob(
    grpc::CallbackServerContext* ctx, const v1::CreateMergeJobRequest* request,
    v1::MergeJob* response) {
  UnaryCall call(ctx, auth_, Method("CreateMergeJob"), "jobs");
  if (!call.ok()) return call.Finish(call.status());
  // Parsing and planning open every checkpoint: on the control executor.
  const std::string tenant = call.tenant();
  return call.Offload(control_, [this, tenant, request, response] {
    auto merge = SpecToMergeRequest(tenant, request->spec(), limits_);
    if (!merge.ok()) return merge.status();
    auto job = jobs_.Submit(*std::move(merge));
    if (job.ok()) ToProto(*job, response);
    return job.status();
  });
}

grpc::ServerUnaryReactor* MergeServiceImpl::GetMergeJob(
    grpc::CallbackServerContext* ctx, const v1::GetMergeJobRequest* request,
    v1::MergeJob* response) {
  UnaryCall call(ctx, auth_, Method("GetMergeJob"), "jobs/" + request->id());
  if (!call.ok()) return call.Finish(call.status());
  auto job = jobs_.Get(call.tenant(), request->id());
  if (job.ok()) ToProto(*job, response);
  return call.Finish(job.status());
}

grpc::ServerUnaryReactor* MergeServiceImpl::ListMergeJobs(
    grpc::CallbackServerContext* ctx, const v1::ListMergeJobsRequest* request,
    v1::ListMergeJobsResponse* response) {
  UnaryCall call(ctx, auth_, Method("ListMergeJobs"), "jobs");
  if (!call.ok()) return call.Finish(call.status());
  std::optional<JobState> state;
  if (request->state() != v1::JOB_STATE_UNSPECIFIED) {
    auto s = JobStateFromProto(request->state());
    if (!s.ok()) return call.Finish(s.status());
    state = *s;
  }
  auto page =
      jobs_.List(call.tenant(), state,
                 PageFromProto(request->page_size(), request->page_token()));
  if (page.ok()) {
    for (const JobRecord& j : page->items) ToProto(j, response->add_jobs());
    response->set_next_page_token(page->next_token);
  }
  return call.Finish(page.status());
}

grpc::ServerUnaryReactor* MergeServiceImpl::CancelMergeJob(
    grpc::CallbackServerContext* ctx, const v1::CancelMergeJobRequest* request,
    v1::MergeJob* response) {
  UnaryCall call(ctx, auth_, Method("CancelMergeJob"), "jobs/" + request->id());
  if (!call.ok()) return call.Finish(call.status());
  auto job = jobs_.Cancel(call.tenant(), request->id());
  if (job.ok()) ToProto(*job, response);
  return call.Finish(job.status());
}

grpc::ServerUnaryReactor* MergeServiceImpl::DeleteMergeJob(
    grpc::CallbackServerContext* ctx, const v1::DeleteMergeJobRequest* request,
    google::protobuf::Empty* response) {
  UnaryCall call(ctx, auth_, Method("DeleteMergeJob"), "jobs/" + request->id());
  if (!call.ok()) return call.Finish(call.status());
  return call.Finish(jobs_.Delete(call.tenant(), request->id()));
}

grpc::ServerUnaryReactor* MergeServiceImpl::AnalyzeMerge(
    grpc::CallbackServerContext* ctx, const v1::AnalyzeMergeRequest* request,
    v1::AnalyzeMergeResponse* response) {
  UnaryCall call(ctx, auth_, Method("AnalyzeMerge"), "analyses");
  if (!call.ok()) return call.Finish(call.status());
  // Parsed and planned on the control executor, then an analysis job: run
  // by whichever replica has room, under its memory budget, surviving a
  // lost replica; the call answers when the job ends. The same request
  // again gets the stored diagnostics at once.
  UnaryCall done = call;
  const bool queued = control_.TrySubmit([this, done, request,
                                          response]() mutable {
    auto config = SpecToConfig(request->spec(), limits_);
    if (!config.ok()) {
      done.Finish(config.status());
      return;
    }
    auto job = jobs_.SubmitAnalysis({done.tenant(), *std::move(config), {}});
    if (!job.ok()) {
      done.Finish(job.status());
      return;
    }
    auto wait = jobs_.FollowToEnd(
        done.tenant(), job->id, nullptr,
        [done, response](const JobRecord& r) mutable {
          if (r.state != JobState::kSucceeded) {
            done.Finish(absl::Status(
                static_cast<absl::StatusCode>(r.error_code), r.error_message));
            return;
          }
          auto d = DiagnosticsFromJson(r.result);
          if (d.ok()) ToProto(*d, response);
          done.Finish(d.status());
        });
    if (!wait.ok()) done.Finish(wait.status());
  });
  if (!queued) {
    return call.Finish(ControlBusy());
  }
  return call.reactor();
}

grpc::ServerWriteReactor<v1::JobEvent>* MergeServiceImpl::WatchMergeJob(
    grpc::CallbackServerContext* ctx, const v1::WatchMergeJobRequest* request) {
  auto open = OpenStream(ctx, "WatchMergeJob", "jobs/" + request->id());
  if (!open.ok()) return new RefusedStream<v1::JobEvent>(open.status());
  return new WatchReactor(jobs_, open->first, std::move(open->second),
                          request->id());
}

grpc::ServerWriteReactor<v1::DownloadChunk>*
MergeServiceImpl::DownloadMergeResult(
    grpc::CallbackServerContext* ctx,
    const v1::DownloadMergeResultRequest* request) {
  auto open = OpenStream(ctx, "DownloadMergeResult", "jobs/" + request->id());
  if (!open.ok()) return new RefusedStream<v1::DownloadChunk>(open.status());
  return new DownloadReactor(jobs_, open->first, std::move(open->second),
                             *request, hooks_.on_bytes_streamed);
}

grpc::ServerWriteReactor<v1::EvaluateEvent>* MergeServiceImpl::Evaluate(
    grpc::CallbackServerContext* ctx, const v1::EvaluateRequest* request) {
  const std::string resource =
      request->target_case() == v1::EvaluateRequest::kCheckpoint
          ? "checkpoints/" + request->checkpoint()
          : "jobs/" + request->job_id();
  auto open = OpenStream(ctx, "Evaluate", resource);
  if (!open.ok()) return new RefusedStream<v1::EvaluateEvent>(open.status());
  const std::string tenant = open->first.tenant();
  auto* reactor = new EventStreamReactor<v1::EvaluateEvent>(
      auth_, open->first, std::move(open->second), resource);
  StartEvaluate(jobs_, control_, tenant, *request, reactor->emitter());
  return reactor;
}

grpc::ServerWriteReactor<v1::SweepEvent>* MergeServiceImpl::Sweep(
    grpc::CallbackServerContext* ctx, const v1::SweepRequest* request) {
  auto open = OpenStream(ctx, "Sweep", "sweeps");
  if (!open.ok()) return new RefusedStream<v1::SweepEvent>(open.status());
  const std::string tenant = open->first.tenant();
  auto* reactor = new EventStreamReactor<v1::SweepEvent>(
      auth_, open->first, std::move(open->second), "sweeps");
  StartSweep(jobs_, control_, limits_, tenant, *request, reactor->emitter());
  return reactor;
}

}  // namespace mergeserve
