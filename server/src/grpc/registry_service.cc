#include "grpc/registry_service.h"

#include "grpc/proto_convert.h"
#include "grpc/status_util.h"
#include "grpc/upload_reactor.h"

namespace mergeserve {

grpc::ServerUnaryReactor* RegistryServiceImpl::RegisterCheckpoint(
    grpc::CallbackServerContext* ctx,
    const v1::RegisterCheckpointRequest* request, v1::Checkpoint* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Validation hashes the whole folder: do it off the gRPC callback thread.
  const bool queued = validators_.TrySubmit([this, reactor, request, response] {
    absl::Status status;
    auto record = FromProto(request->checkpoint());
    if (!record.ok()) {
      status = record.status();
    } else {
      auto registered = registry_.Register(*record);
      if (registered.ok()) {
        ToProto(*registered, response);
        response->clear_tensors();
      }
      status = registered.status();
    }
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!queued) reactor->Finish(ToGrpcStatus(ValidatorsBusy()));
  return reactor;
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>*
RegistryServiceImpl::UploadCheckpoint(grpc::CallbackServerContext* ctx,
                                      v1::Checkpoint* response) {
  return new UploadReactor(registry_, validators_, response);
}

grpc::ServerUnaryReactor* RegistryServiceImpl::GetCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::GetCheckpointRequest* request,
    v1::Checkpoint* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto record = registry_.Get(request->name(),
                              request->view() == v1::CHECKPOINT_VIEW_FULL);
  if (record.ok()) ToProto(*record, response);
  reactor->Finish(ToGrpcStatus(record.status()));
  return reactor;
}

grpc::ServerUnaryReactor* RegistryServiceImpl::ListCheckpoints(
    grpc::CallbackServerContext* ctx, const v1::ListCheckpointsRequest* request,
    v1::ListCheckpointsResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::optional<CheckpointRole> role;
  if (request->role() != v1::CHECKPOINT_ROLE_UNSPECIFIED) {
    auto r = RoleFromProto(request->role());
    if (!r.ok()) {
      reactor->Finish(ToGrpcStatus(r.status()));
      return reactor;
    }
    role = *r;
  }
  std::map<std::string, std::string> labels(request->label_selector().begin(),
                                            request->label_selector().end());
  auto records = registry_.List(role, labels);
  if (records.ok()) {
    for (const CheckpointRecord& c : *records) {
      ToProto(c, response->add_checkpoints());
    }
  }
  reactor->Finish(ToGrpcStatus(records.status()));
  return reactor;
}

grpc::ServerUnaryReactor* RegistryServiceImpl::DeleteCheckpoint(
    grpc::CallbackServerContext* ctx,
    const v1::DeleteCheckpointRequest* request,
    google::protobuf::Empty* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(registry_.Delete(request->name())));
  return reactor;
}

grpc::ServerUnaryReactor* RegistryServiceImpl::RegisterDataset(
    grpc::CallbackServerContext* ctx, const v1::RegisterDatasetRequest* request,
    v1::Dataset* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Hashing the file takes a while: off the gRPC callback thread.
  const bool queued = validators_.TrySubmit([this, reactor, request, response] {
    auto record = FromProto(request->dataset());
    absl::Status status = record.status();
    if (record.ok()) {
      auto registered = registry_.RegisterDataset(*record);
      if (registered.ok()) ToProto(*registered, response);
      status = registered.status();
    }
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!queued) reactor->Finish(ToGrpcStatus(ValidatorsBusy()));
  return reactor;
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>*
RegistryServiceImpl::UploadDataset(grpc::CallbackServerContext* ctx,
                                   v1::Dataset* response) {
  return new UploadReactor(registry_, validators_, response);
}

grpc::ServerUnaryReactor* RegistryServiceImpl::GetDataset(
    grpc::CallbackServerContext* ctx, const v1::GetDatasetRequest* request,
    v1::Dataset* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  auto record = registry_.GetDataset(request->name());
  if (record.ok()) ToProto(*record, response);
  reactor->Finish(ToGrpcStatus(record.status()));
  return reactor;
}

grpc::ServerUnaryReactor* RegistryServiceImpl::ListDatasets(
    grpc::CallbackServerContext* ctx, const v1::ListDatasetsRequest* request,
    v1::ListDatasetsResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::optional<DatasetRole> role;
  if (request->role() != v1::DATASET_ROLE_UNSPECIFIED) {
    auto r = DatasetRoleFromProto(request->role());
    if (!r.ok()) {
      reactor->Finish(ToGrpcStatus(r.status()));
      return reactor;
    }
    role = *r;
  }
  auto records = registry_.ListDatasets(request->task(), role);
  if (records.ok()) {
    for (const DatasetRecord& d : *records)
      ToProto(d, response->add_datasets());
  }
  reactor->Finish(ToGrpcStatus(records.status()));
  return reactor;
}

grpc::ServerUnaryReactor* RegistryServiceImpl::DeleteDataset(
    grpc::CallbackServerContext* ctx, const v1::DeleteDatasetRequest* request,
    google::protobuf::Empty* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(registry_.DeleteDataset(request->name())));
  return reactor;
}

}  // namespace mergeserve
