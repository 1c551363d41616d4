// MergeService.WatchMergeJob: streams a job's records, one write in flight;
// the newest unsent record replaces older unsent ones, so a slow reader gets
// fewer, fresher events. Ends after the job's final state.
#ifndef MERGESERVE_GRPC_WATCH_REACTOR_H_
#define MERGESERVE_GRPC_WATCH_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "grpc/authorizer.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/v1/merge.grpc.pb.h"

namespace mergeserve {

class WatchReactor : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  WatchReactor(JobManager& jobs, Caller caller, StreamSlot slot,
               const std::string& id);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Finishes the call, freeing its stream slot first.
  void End(const grpc::Status& status);
  struct Shared {
    std::mutex mu;
    WatchReactor* reactor = nullptr;
  };
  // Called with state_->mu held.
  void Offer(const JobRecord& r);
  void SendPendingLocked();

  JobManager& jobs_;
  Caller caller_;
  StreamSlot slot_;
  std::shared_ptr<Shared> state_;
  uint64_t subscription_ = 0;
  std::optional<JobRecord> pending_;
  v1::JobEvent event_;
  bool writing_ = false;
  bool last_sent_final_ = false;
  bool finished_ = false;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_WATCH_REACTOR_H_
