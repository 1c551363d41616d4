// The server side of RegistryService.UploadCheckpoint and UploadDataset:
// writes the declared files into a temporary folder under the data dir while
// hashing them, then verifies and registers the folder (or the dataset
// file). A broken, short, corrupt, oversized or idle upload leaves nothing
// behind. Every upload is bounded before a byte is written: the number of
// files, its bytes (server cap and tenant quota), the tenant's stored bytes;
// it holds at most one open file, and one that sends nothing for the idle
// timeout is ended (UploadGuard watches).
#ifndef MERGESERVE_GRPC_UPLOAD_REACTOR_H_
#define MERGESERVE_GRPC_UPLOAD_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "grpc/authorizer.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/registry.grpc.pb.h"

namespace mergeserve {

class UploadReactor;

struct UploadLimits {
  int64_t max_files = 1024;              // files one upload may declare
  int64_t max_bytes = int64_t{1} << 40;  // one upload (quota may lower)
  std::chrono::milliseconds idle_timeout{60000};
};

// The limits every upload obeys and the watchdog that ends idle ones; one
// per server.
class UploadGuard {
 public:
  // stored_bytes: what a tenant already stores (uploads and results).
  UploadGuard(
      UploadLimits limits, const TenantQuotas* quotas,
      std::function<absl::StatusOr<int64_t>(const std::string&)> stored_bytes);
  ~UploadGuard();

  const UploadLimits& limits() const { return limits_; }
  // OK when `tenant` may upload `bytes` now, else RESOURCE_EXHAUSTED naming
  // the limit.
  absl::Status Admit(const std::string& tenant, int64_t files,
                     int64_t bytes) const;
  void Watch(UploadReactor* r);
  void Unwatch(UploadReactor* r);

 private:
  void Loop();
  const UploadLimits limits_;
  const TenantQuotas* quotas_;
  std::function<absl::StatusOr<int64_t>(const std::string&)> stored_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<UploadReactor*> watched_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

class UploadReactor
    : public grpc::ServerReadReactor<v1::UploadCheckpointRequest> {
 public:
  struct Context {
    CheckpointRegistry& registry;
    BackgroundExecutor& control;  // runs the final validation
    UploadGuard& guard;
    Authorizer& auth;
  };
  // Exactly one of `checkpoint` / `dataset` is the response to fill.
  UploadReactor(Context c, Caller caller, StreamSlot slot,
                grpc::CallbackServerContext* ctx, v1::Checkpoint* checkpoint,
                v1::Dataset* dataset);
  ~UploadReactor() override;
  // A reactor that ends the call at once with `status`.
  static grpc::ServerReadReactor<v1::UploadCheckpointRequest>* Refuse(
      const absl::Status& status);

  void OnReadDone(bool ok) override;
  void OnCancel() override {}
  void OnDone() override;

  // Which file names an upload may carry.
  static bool AllowedFile(const std::string& name);
  // Called by the guard: ends the upload if it has been idle too long.
  void ExpireIfIdle(std::chrono::steady_clock::time_point now);

 private:
  struct File {
    int64_t size = 0;
    std::string sha256;
    int64_t written = 0;
    bool done = false;
    std::unique_ptr<Sha256> hash;
  };
  absl::Status Begin(const v1::UploadHeader& header);
  absl::Status Append(const v1::UploadChunk& chunk);
  absl::Status CloseCurrent();
  void Complete();
  void FinishLocked(const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Context c_;
  Caller caller_;
  StreamSlot slot_;
  v1::Checkpoint* response_ = nullptr;
  v1::Dataset* dataset_response_ = nullptr;
  std::string resource_;
  DatasetRecord dataset_;
  CheckpointRecord record_;
  v1::UploadCheckpointRequest request_;
  std::map<std::string, File> files_;
  std::string current_;  // the file open now ("" = none)
  int current_fd_ = -1;
  std::string temp_dir_;
  std::mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool completing_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point last_activity_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_UPLOAD_REACTOR_H_
