// mergeserve.v1.MergeService: adapts JobManager to the callback API.
// WatchMergeJob and DownloadMergeResult are ServerWriteReactors that keep at
// most one message in flight: a slow client costs one event or one chunk of
// memory, never the model. Evaluate and Sweep run on their own threads and
// stream through EventStreamReactor.
#ifndef MERGESERVE_GRPC_MERGE_SERVICE_H_
#define MERGESERVE_GRPC_MERGE_SERVICE_H_

#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/v1/merge.grpc.pb.h"

namespace mergeserve {

// Hooks for metrics; all optional.
struct MergeServiceHooks {
  std::function<void(int64_t)> on_bytes_streamed;
};

class MergeServiceImpl final : public v1::MergeService::CallbackService {
 public:
  MergeServiceImpl(JobManager& jobs, MergeServiceHooks hooks = {})
      : jobs_(jobs), hooks_(std::move(hooks)) {}

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
  JobManager& jobs_;
  MergeServiceHooks hooks_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_MERGE_SERVICE_H_
