#include "grpc/registry_service.h"

#include <thread>

#include "grpc/proto_convert.h"
#include "grpc/status_util.h"
#include "grpc/upload_reactor.h"

namespace mergeserve {

grpc::ServerUnaryReactor* RegistryServiceImpl::RegisterCheckpoint(
    grpc::CallbackServerContext* ctx,
    const v1::RegisterCheckpointRequest* request, v1::Checkpoint* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Validation hashes the whole folder: do it off the gRPC callback thread.
  std::thread([this, reactor, request, response] {
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
  }).detach();
  return reactor;
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>*
RegistryServiceImpl::UploadCheckpoint(grpc::CallbackServerContext* ctx,
                                      v1::Checkpoint* response) {
  return new UploadReactor(registry_, response);
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

}  // namespace mergeserve
