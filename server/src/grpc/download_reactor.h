// MergeService.DownloadMergeResult: sends a result's files chunk by chunk,
// reading the next chunk only after the previous one was written, so a slow
// client holds one chunk of memory, never the model.
#ifndef MERGESERVE_GRPC_DOWNLOAD_REACTOR_H_
#define MERGESERVE_GRPC_DOWNLOAD_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>
#include <vector>

#include "grpc/authorizer.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/v1/merge.grpc.pb.h"

namespace mergeserve {

class DownloadReactor : public grpc::ServerWriteReactor<v1::DownloadChunk> {
 public:
  DownloadReactor(JobManager& jobs, Caller caller, StreamSlot slot,
                  const v1::DownloadMergeResultRequest& req,
                  std::function<void(int64_t)> on_bytes);
  ~DownloadReactor() override;

  void OnWriteDone(bool ok) override;
  void OnDone() override { delete this; }

  static constexpr int kMaxChunk = 1 << 20;

 private:
  // Finishes the call, freeing its stream slot first.
  void End(const grpc::Status& status);
  void Next();

  StreamSlot slot_;
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

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_DOWNLOAD_REACTOR_H_
