#include "grpc/admin_service.h"

#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "mergeserve/base/clock.h"

namespace mergeserve {
namespace {

std::string Method(const char* name) {
  return absl::StrCat("mergeserve.v1.AdminService/", name);
}

absl::Status NoTokens() {
  return absl::FailedPreconditionError(
      "the server runs without --auth token: there are no tokens to manage");
}

}  // namespace

grpc::ServerUnaryReactor* AdminServiceImpl::CreateToken(
    grpc::CallbackServerContext* ctx, const v1::CreateTokenRequest* request,
    v1::CreateTokenResponse* response) {
  UnaryCall call(ctx, auth_, Method("CreateToken"), "tokens");
  if (!call.ok()) return call.Finish(call.status());
  if (tokens_ == nullptr) return call.Finish(NoTokens());
  auto role = RoleFromProto(request->role());
  if (!role.ok()) return call.Finish(role.status());
  // Checked before it is scaled to ms, which could overflow.
  if (request->ttl_seconds() < 0 ||
      request->ttl_seconds() > kMaxDurationMs / 1000) {
    return call.Finish(absl::InvalidArgumentError(
        absl::StrCat("ttl_seconds must be between 0 and ",
                     kMaxDurationMs / 1000, " (100 years)")));
  }
  const std::string tenant =
      request->tenant().empty() ? call.tenant() : request->tenant();
  auto token = tokens_->Create(tenant, *role, request->ttl_seconds() * 1000,
                               request->description());
  if (token.ok()) {
    call.set_resource("tokens/" + token->record.id);
    ToProto(token->record, response->mutable_token());
    response->set_secret(token->secret);
  }
  return call.Finish(token.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListTokens(
    grpc::CallbackServerContext* ctx, const v1::ListTokensRequest* request,
    v1::ListTokensResponse* response) {
  UnaryCall call(ctx, auth_, Method("ListTokens"), "tokens");
  if (!call.ok()) return call.Finish(call.status());
  if (tokens_ == nullptr) return call.Finish(NoTokens());
  auto tokens = tokens_->List(request->tenant());
  if (tokens.ok()) {
    for (const TokenRecord& t : *tokens) ToProto(t, response->add_tokens());
  }
  return call.Finish(tokens.status());
}

grpc::ServerUnaryReactor* AdminServiceImpl::RevokeToken(
    grpc::CallbackServerContext* ctx, const v1::RevokeTokenRequest* request,
    v1::Token* response) {
  UnaryCall call(ctx, auth_, Method("RevokeToken"), "tokens/" + request->id());
  if (!call.ok()) return call.Finish(call.status());
  if (tokens_ == nullptr) return call.Finish(NoTokens());
  auto t = tokens_->Revoke(request->id());
  if (t.ok()) ToProto(*t, response);
  return call.Finish(t.status());
}

absl::Status AdminServiceImpl::FillQuota(const std::string& tenant,
                                         v1::QuotaResponse* out) {
  auto q = quotas_.Get(tenant);
  if (!q.ok()) return q.status();
  out->set_tenant(tenant);
  ToProto(*q, out->mutable_quota());
  auto active = jobs_.ActiveJobs(tenant);
  if (active.ok()) out->set_jobs_active(*active);
  auto stored = jobs_.StoredBytes(tenant);
  if (stored.ok()) out->set_stored_bytes(*stored);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdminServiceImpl::GetQuota(
    grpc::CallbackServerContext* ctx, const v1::GetQuotaRequest* request,
    v1::QuotaResponse* response) {
  UnaryCall call(ctx, auth_, Method("GetQuota"), "quotas");
  if (!call.ok()) return call.Finish(call.status());
  const std::string tenant =
      request->tenant().empty() ? call.tenant() : request->tenant();
  call.set_resource("quotas/" + tenant);
  return call.Finish(FillQuota(tenant, response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::SetQuota(
    grpc::CallbackServerContext* ctx, const v1::SetQuotaRequest* request,
    v1::QuotaResponse* response) {
  UnaryCall call(ctx, auth_, Method("SetQuota"), "quotas");
  if (!call.ok()) return call.Finish(call.status());
  const std::string tenant =
      request->tenant().empty() ? call.tenant() : request->tenant();
  call.set_resource("quotas/" + tenant);
  auto q = quotas_.Set(tenant, FromProto(request->quota()));
  if (!q.ok()) return call.Finish(q.status());
  return call.Finish(FillQuota(tenant, response));
}

grpc::ServerUnaryReactor* AdminServiceImpl::PublishCheckpoint(
    grpc::CallbackServerContext* ctx,
    const v1::PublishCheckpointRequest* request, v1::Checkpoint* response) {
  UnaryCall call(ctx, auth_, Method("PublishCheckpoint"),
                 "checkpoints/" + request->name());
  if (!call.ok()) return call.Finish(call.status());
  auto c =
      registry_.Publish(call.tenant(), request->name(), request->published());
  if (c.ok()) ToProto(*c, response);
  return call.Finish(c.status());
}

}  // namespace mergeserve
