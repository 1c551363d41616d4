// The server side of RegistryService.UploadCheckpoint and UploadDataset:
// writes the declared files into a temporary folder under the data dir while
// hashing them, then verifies and registers the folder (or the dataset
// file). A broken, short or corrupt upload leaves nothing behind.
#ifndef MERGESERVE_GRPC_UPLOAD_REACTOR_H_
#define MERGESERVE_GRPC_UPLOAD_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/registry.grpc.pb.h"

namespace mergeserve {

// What a registration gets when the validators' backlog is full.
absl::Status ValidatorsBusy();

class UploadReactor
    : public grpc::ServerReadReactor<v1::UploadCheckpointRequest> {
 public:
  // `validators` runs the final validation and registration.
  UploadReactor(CheckpointRegistry& registry, BackgroundExecutor& validators,
                v1::Checkpoint* response);
  UploadReactor(CheckpointRegistry& registry, BackgroundExecutor& validators,
                v1::Dataset* response);
  ~UploadReactor() override;

  void OnReadDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Which file names an upload may carry.
  static bool AllowedFile(const std::string& name);

 private:
  struct File {
    int64_t size = 0;
    std::string sha256;
    int64_t written = 0;
    int fd = -1;
    std::unique_ptr<Sha256> hash;
  };
  absl::Status Begin(const v1::UploadHeader& header);
  absl::Status Append(const v1::UploadChunk& chunk);
  void Complete();
  void Fail(const absl::Status& status);
  void CloseFiles();

  CheckpointRegistry& registry_;
  BackgroundExecutor& validators_;
  v1::Checkpoint* response_ = nullptr;
  v1::Dataset* dataset_response_ = nullptr;  // set for dataset uploads
  DatasetRecord dataset_;
  v1::UploadCheckpointRequest request_;
  CheckpointRecord record_;
  std::map<std::string, File> files_;
  std::string temp_dir_;
  bool started_ = false;
  bool finished_ = false;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_UPLOAD_REACTOR_H_
