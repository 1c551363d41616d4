#include "grpc/registry_service.h"

#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "grpc/status_util.h"

namespace mergeserve {
namespace {

constexpr char kService[] = "mergeserve.v1.RegistryService/";

std::string Method(const char* name) { return absl::StrCat(kService, name); }

}  // namespace

grpc::ServerUnaryReactor* RegistryServiceImpl::RegisterCheckpoint(
    grpc::CallbackServerContext* ctx,
    const v1::RegisterCheckpointRequest* request, v1::Checkpoint* response) {
  UnaryCall call(ctx, auth_, Method("RegisterCheckpoint"),
                 "checkpoints/" + request->checkpoint().name());
  if (!call.ok()) return call.Finish(call.status());
  // Validation hashes the whole folder: off the gRPC callback thread.
  const std::string tenant = call.tenant();
  return call.Offload(control_, [this, tenant, request, response] {
    auto record = FromProto(request->checkpoint());
    if (!record.ok()) return record.status();
    auto registered = registry_.Register(tenant, *record);
    if (!registered.ok()) return registered.status();
    ToProto(*registered, response);
    response->clear_tensors();
    return absl::OkStatus();
  });
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>*
RegistryServiceImpl::Upload(grpc::CallbackServerContext* ctx,
                            const char* method, v1::Checkpoint* checkpoint,
                            v1::Dataset* dataset) {
  auto caller = auth_.Authorize(ctx, Method(method));
  absl::StatusOr<StreamSlot> slot =
      caller.ok() ? auth_.AcquireStream(*caller) : caller.status();
  if (caller.ok() && !slot.ok()) auth_.Finished(*caller, "", slot.status());
  UploadReactor::Context c{registry_, control_, uploads_, auth_};
  if (!slot.ok()) return UploadReactor::Refuse(slot.status());
  return new UploadReactor(c, *caller, *std::move(slot), ctx, checkpoint,
                           dataset);
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>*
RegistryServiceImpl::UploadCheckpoint(grpc::CallbackServerContext* ctx,
                                      v1::Checkpoint* response) {
  return Upload(ctx, "UploadCheckpoint", response, nullptr);
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>*
RegistryServiceImpl::UploadDataset(grpc::CallbackServerContext* ctx,
                                   v1::Dataset* response) {
  return Upload(ctx, "UploadDataset", nullptr, response);
}

grpc::ServerUnaryReactor* RegistryServiceImpl::GetCheckpoint(
    grpc::CallbackServerContext* ctx, const v1::GetCheckpointRequest* request,
    v1::Checkpoint* response) {
  UnaryCall call(ctx, auth_, Method("GetCheckpoint"),
                 "checkpoints/" + request->name());
  if (!call.ok()) return call.Finish(call.status());
  auto record = registry_.Get(call.tenant(), request->name(),
                              request->view() == v1::CHECKPOINT_VIEW_FULL);
  if (record.ok()) ToProto(*record, response);
  return call.Finish(record.status());
}

grpc::ServerUnaryReactor* RegistryServiceImpl::ListCheckpoints(
    grpc::CallbackServerContext* ctx, const v1::ListCheckpointsRequest* request,
    v1::ListCheckpointsResponse* response) {
  UnaryCall call(ctx, auth_, Method("ListCheckpoints"), "checkpoints");
  if (!call.ok()) return call.Finish(call.status());
  std::optional<CheckpointRole> role;
  if (request->role() != v1::CHECKPOINT_ROLE_UNSPECIFIED) {
    auto r = RoleFromProto(request->role());
    if (!r.ok()) return call.Finish(r.status());
    role = *r;
  }
  std::map<std::string, std::string> labels(request->label_selector().begin(),
                                            request->label_selector().end());
  auto page = registry_.List(
      call.tenant(), role, labels,
      PageFromProto(request->page_size(), request->page_token()));
  if (page.ok()) {
    for (const CheckpointRecord& c : page->items) {
      ToProto(c, response->add_checkpoints());
    }
    response->set_next_page_token(page->next_token);
  }
  return call.Finish(page.status());
}

grpc::ServerUnaryReactor* RegistryServiceImpl::DeleteCheckpoint(
    grpc::CallbackServerContext* ctx,
    const v1::DeleteCheckpointRequest* request,
    google::protobuf::Empty* response) {
  UnaryCall call(ctx, auth_, Method("DeleteCheckpoint"),
                 "checkpoints/" + request->name());
  if (!call.ok()) return call.Finish(call.status());
  return call.Finish(
      registry_.Delete(call.tenant(), request->name(), call.caller().admin()));
}

grpc::ServerUnaryReactor* RegistryServiceImpl::RegisterDataset(
    grpc::CallbackServerContext* ctx, const v1::RegisterDatasetRequest* request,
    v1::Dataset* response) {
  UnaryCall call(ctx, auth_, Method("RegisterDataset"),
                 "datasets/" + request->dataset().name());
  if (!call.ok()) return call.Finish(call.status());
  const std::string tenant = call.tenant();
  // Hashing the file takes a while: off the gRPC callback thread.
  return call.Offload(control_, [this, tenant, request, response] {
    auto record = FromProto(request->dataset());
    if (!record.ok()) return record.status();
    auto registered = registry_.RegisterDataset(tenant, *record);
    if (registered.ok()) ToProto(*registered, response);
    return registered.status();
  });
}

grpc::ServerUnaryReactor* RegistryServiceImpl::GetDataset(
    grpc::CallbackServerContext* ctx, const v1::GetDatasetRequest* request,
    v1::Dataset* response) {
  UnaryCall call(ctx, auth_, Method("GetDataset"),
                 "datasets/" + request->name());
  if (!call.ok()) return call.Finish(call.status());
  auto record = registry_.GetDataset(call.tenant(), request->name());
  if (record.ok()) ToProto(*record, response);
  return call.Finish(record.status());
}

grpc::ServerUnaryReactor* RegistryServiceImpl::ListDatasets(
    grpc::CallbackServerContext* ctx, const v1::ListDatasetsRequest* request,
    v1::ListDatasetsResponse* response) {
  UnaryCall call(ctx, auth_, Method("ListDatasets"), "datasets");
  if (!call.ok()) return call.Finish(call.status());
  std::optional<DatasetRole> role;
  if (request->role() != v1::DATASET_ROLE_UNSPECIFIED) {
    auto r = DatasetRoleFromProto(request->role());
    if (!r.ok()) return call.Finish(r.status());
    role = *r;
  }
  auto page = registry_.ListDatasets(
      call.tenant(), request->task(), role,
      PageFromProto(request->page_size(), request->page_token()));
  if (page.ok()) {
    for (const DatasetRecord& d : page->items) {
      ToProto(d, response->add_datasets());
    }
    response->set_next_page_token(page->next_token);
  }
  return call.Finish(page.status());
}

grpc::ServerUnaryReactor* RegistryServiceImpl::DeleteDataset(
    grpc::CallbackServerContext* ctx, const v1::DeleteDatasetRequest* request,
    google::protobuf::Empty* response) {
  UnaryCall call(ctx, auth_, Method("DeleteDataset"),
                 "datasets/" + request->name());
  if (!call.ok()) return call.Finish(call.status());
  return call.Finish(registry_.DeleteDataset(call.tenant(), request->name()));
}

}  // namespace mergeserve
