// mergeserve.v1.MergeService: adapts JobManager to the callback API. Every
// call is authorized first (grpc/call.h). Requests are parsed and planned
// once, on the bounded control executor, never on gRPC's threads; merges,
// analyses, evaluations and sweeps then run on the JobManager's one work
// executor under the memory budget. Watch and Download stream with one
// message in flight (watch_reactor, download_reactor); Evaluate and Sweep
// stream what their work item emits (event_stream_reactor).
#ifndef MERGESERVE_GRPC_MERGE_SERVICE_H_
#define MERGESERVE_GRPC_MERGE_SERVICE_H_

#include <functional>

#include "grpc/authorizer.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/v1/merge.grpc.pb.h"

namespace mergeserve {

// Hooks for metrics; all optional.
struct MergeServiceHooks {
  std::function<void(int64_t)> on_bytes_streamed;
};

class MergeServiceImpl final : public v1::MergeService::CallbackService {
 public:
  MergeServiceImpl(JobManager& jobs, Authorizer& auth,
                   BackgroundExecutor& control, ConfigLimits limits,
                   MergeServiceHooks hooks = {})
      : jobs_(jobs),
        auth_(auth),
        control_(control),
        limits_(limits),
        hooks_(std::move(hooks)) {}

  grpc::ServerUnaryReactor* CreateMergeJob(
      grpc::CallbackServerContext* ctx,
      const v1::CreateMergeJobRequest* request,
      v1::MergeJob* response) override;
  grpc::ServerUnaryReactor* GetMergeJob(grpc::CallbackServerContext* ctx,
                                        const v1::GetMergeJobRequest* request,
                                        v1::MergeJob* response) override;
  grpc::ServerUnaryReactor* ListMergeJobs(
      grpc::CallbackServerContext* ctx, const v1::ListMergeJobsRequest* request,
      v1::ListMergeJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelMergeJob(
      grpc::CallbackServerContext* ctx,
      const v1::CancelMergeJobRequest* request,
      v1::MergeJob* response) override;
  grpc::ServerUnaryReactor* DeleteMergeJob(
      grpc::CallbackServerContext* ctx,
      const v1::DeleteMergeJobRequest* request,
      google::protobuf::Empty* response) override;
  grpc::ServerUnaryReactor* AnalyzeMerge(
      grpc::CallbackServerContext* ctx, const v1::AnalyzeMergeRequest* request,
      v1::AnalyzeMergeResponse* response) override;
  grpc::ServerWriteReactor<v1::JobEvent>* WatchMergeJob(
      grpc::CallbackServerContext* ctx,
      const v1::WatchMergeJobRequest* request) override;
  grpc::ServerWriteReactor<v1::DownloadChunk>* DownloadMergeResult(
      grpc::CallbackServerContext* ctx,
      const v1::DownloadMergeResultRequest* request) override;
  grpc::ServerWriteReactor<v1::EvaluateEvent>* Evaluate(
      grpc::CallbackServerContext* ctx,
      const v1::EvaluateRequest* request) override;
  grpc::ServerWriteReactor<v1::SweepEvent>* Sweep(
      grpc::CallbackServerContext* ctx,
      const v1::SweepRequest* request) override;

 private:
  // Authorizes a streaming call and takes one of its tenant's stream slots.
  absl::StatusOr<std::pair<Caller, StreamSlot>> OpenStream(
      grpc::CallbackServerContext* ctx, const char* method,
      const std::string& resource);

  JobManager& jobs_;
  Authorizer& auth_;
  BackgroundExecutor& control_;
  const ConfigLimits limits_;
  MergeServiceHooks hooks_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_MERGE_SERVICE_H_
