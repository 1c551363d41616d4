// mergeserve.v1.RegistryService: a thin callback-API adapter over
// CheckpointRegistry. It authorizes (grpc/call.h), converts messages and
// statuses, and runs slow validation off gRPC's threads.
#ifndef MERGESERVE_GRPC_REGISTRY_SERVICE_H_
#define MERGESERVE_GRPC_REGISTRY_SERVICE_H_

#include <functional>

#include "grpc/authorizer.h"
#include "grpc/upload_reactor.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/registry.grpc.pb.h"

namespace mergeserve {

class RegistryServiceImpl final : public v1::RegistryService::CallbackService {
 public:
  // `control` validates registrations (hashing whole folders) off gRPC's
  // threads; `uploads` watches uploads for idleness and holds their limits.
  RegistryServiceImpl(CheckpointRegistry& registry, Authorizer& auth,
                      BackgroundExecutor& control, UploadGuard& uploads)
      : registry_(registry),
        auth_(auth),
        control_(control),
        uploads_(uploads) {}

  grpc::ServerUnaryReactor* RegisterCheckpoint(
      grpc::CallbackServerContext* ctx,
      const v1::RegisterCheckpointRequest* request,
      v1::Checkpoint* response) override;
  grpc::ServerReadReactor<v1::UploadCheckpointRequest>* UploadCheckpoint(
      grpc::CallbackServerContext* ctx, v1::Checkpoint* response) override;
  grpc::ServerUnaryReactor* GetCheckpoint(
      grpc::CallbackServerContext* ctx, const v1::GetCheckpointRequest* request,
      v1::Checkpoint* response) override;
  grpc::ServerUnaryReactor* ListCheckpoints(
      grpc::CallbackServerContext* ctx,
      const v1::ListCheckpointsRequest* request,
      v1::ListCheckpointsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteCheckpoint(
      grpc::CallbackServerContext* ctx,
      const v1::DeleteCheckpointRequest* request,
      google::protobuf::Empty* response) override;

  grpc::ServerUnaryReactor* RegisterDataset(
      grpc::CallbackServerContext* ctx,
      const v1::RegisterDatasetRequest* request,
      v1::Dataset* response) override;
  grpc::ServerReadReactor<v1::UploadCheckpointRequest>* UploadDataset(
      grpc::CallbackServerContext* ctx, v1::Dataset* response) override;
  grpc::ServerUnaryReactor* GetDataset(grpc::CallbackServerContext* ctx,
                                       const v1::GetDatasetRequest* request,
                                       v1::Dataset* response) override;
  grpc::ServerUnaryReactor* ListDatasets(
      grpc::CallbackServerContext* ctx, const v1::ListDatasetsRequest* request,
      v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(
      grpc::CallbackServerContext* ctx, const v1::DeleteDatasetRequest* request,
      google::protobuf::Empty* response) override;

 private:
  grpc::ServerReadReactor<v1::UploadCheckpointRequest>* Upload(
      grpc::CallbackServerContext* ctx, const char* method,
      v1::Checkpoint* checkpoint, v1::Dataset* dataset);

  CheckpointRegistry& registry_;
  Authorizer& auth_;
  BackgroundExecutor& control_;
  UploadGuard& uploads_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_REGISTRY_SERVICE_H_
