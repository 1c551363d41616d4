// mergeserve.v1.RegistryService: a thin callback-API adapter over
// CheckpointRegistry. It converts messages and statuses and nothing else.
#ifndef MERGESERVE_GRPC_REGISTRY_SERVICE_H_
#define MERGESERVE_GRPC_REGISTRY_SERVICE_H_

#include "mergeserve/base/background_executor.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/registry.grpc.pb.h"

namespace mergeserve {

class RegistryServiceImpl final : public v1::RegistryService::CallbackService {
 public:
  explicit RegistryServiceImpl(CheckpointRegistry& registry)
      : registry_(registry) {}
  // Waits for the validations already accepted (the server has stopped
  // taking calls by then).
  ~RegistryServiceImpl() override = default;

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
  CheckpointRegistry& registry_;
  // Registrations hash whole folders: two at a time, a bounded backlog,
  // never on gRPC's callback threads.
  BackgroundExecutor validators_{2, 64};
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_REGISTRY_SERVICE_H_
