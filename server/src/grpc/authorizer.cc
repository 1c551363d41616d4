#include "grpc/authorizer.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {
namespace {

std::string Metadata(grpc::ServerContextBase* ctx, const char* key) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(key);
  if (it == md.end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

const std::vector<RpcPolicy>& RpcPolicies() {
  static const auto* kPolicies = new std::vector<RpcPolicy>{
      // RegistryService
      {"mergeserve.v1.RegistryService/RegisterCheckpoint", Role::kWriter, true},
      {"mergeserve.v1.RegistryService/UploadCheckpoint", Role::kWriter, true},
      {"mergeserve.v1.RegistryService/GetCheckpoint", Role::kReader, false},
      {"mergeserve.v1.RegistryService/ListCheckpoints", Role::kReader, false},
      {"mergeserve.v1.RegistryService/DeleteCheckpoint", Role::kWriter, true},
      {"mergeserve.v1.RegistryService/RegisterDataset", Role::kWriter, true},
      {"mergeserve.v1.RegistryService/UploadDataset", Role::kWriter, true},
      {"mergeserve.v1.RegistryService/GetDataset", Role::kReader, false},
      {"mergeserve.v1.RegistryService/ListDatasets", Role::kReader, false},
      {"mergeserve.v1.RegistryService/DeleteDataset", Role::kWriter, true},
      // MergeService
      {"mergeserve.v1.MergeService/CreateMergeJob", Role::kWriter, true},
      {"mergeserve.v1.MergeService/GetMergeJob", Role::kReader, false},
      {"mergeserve.v1.MergeService/ListMergeJobs", Role::kReader, false},
      {"mergeserve.v1.MergeService/CancelMergeJob", Role::kWriter, true},
      {"mergeserve.v1.MergeService/DeleteMergeJob", Role::kWriter, true},
      {"mergeserve.v1.MergeService/WatchMergeJob", Role::kReader, false},
      {"mergeserve.v1.MergeService/AnalyzeMerge", Role::kReader, false},
      {"mergeserve.v1.MergeService/DownloadMergeResult", Role::kReader, false},
      {"mergeserve.v1.MergeService/Evaluate", Role::kReader, false},
      {"mergeserve.v1.MergeService/Sweep", Role::kWriter, false},
      // AdminService
      {"mergeserve.v1.AdminService/CreateToken", Role::kAdmin, true},
      {"mergeserve.v1.AdminService/ListTokens", Role::kAdmin, false},
      {"mergeserve.v1.AdminService/RevokeToken", Role::kAdmin, true},
      {"mergeserve.v1.AdminService/GetQuota", Role::kAdmin, false},
      {"mergeserve.v1.AdminService/SetQuota", Role::kAdmin, true},
      {"mergeserve.v1.AdminService/PublishCheckpoint", Role::kAdmin, true},
      // Reflection describes the API: authenticated callers only.
      {"grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
       Role::kReader, false},
  };
  return *kPolicies;
}

const RpcPolicy* FindRpcPolicy(const std::string& method) {
  for (const RpcPolicy& p : RpcPolicies()) {
    if (method == p.method) return &p;
  }
  return nullptr;
}

StreamSlot& StreamSlot::operator=(StreamSlot&& o) noexcept {
  if (this != &o) {
    Release();
    owner_ = o.owner_;
    tenant_ = std::move(o.tenant_);
    o.owner_ = nullptr;
  }
  return *this;
}

void StreamSlot::Release() {
  if (owner_ != nullptr) owner_->ReleaseStream(tenant_);
  owner_ = nullptr;
}

absl::StatusOr<Caller> Authorizer::Authorize(grpc::ServerContextBase* ctx,
                                             const std::string& method) {
  Caller caller;
  caller.peer = ctx->peer();
  caller.policy = FindRpcPolicy(method);
  if (caller.policy == nullptr) {
    // A method missing from the table is a server bug; refuse it.
    return absl::InternalError(absl::StrCat("no policy for ", method));
  }
  const std::string header = Metadata(ctx, kTenantHeader);
  absl::Status denied;
  if (options_.tokens == nullptr) {
    caller.principal = {kDefaultTenant, Role::kAdmin, "-"};
  } else {
    const std::string auth = Metadata(ctx, "authorization");
    const std::string scheme = "bearer ";
    if (auth.empty()) {
      denied = absl::UnauthenticatedError(
          "this server requires a token: send 'authorization: Bearer "
          "<token>' (mergectl --token, $MERGESERVE_TOKEN)");
    } else if (auth.size() <= scheme.size() ||
               absl::AsciiStrToLower(auth.substr(0, scheme.size())) != scheme) {
      denied = absl::UnauthenticatedError(
          "the authorization header must read 'Bearer <token>'");
    } else {
      auto p = options_.tokens->Verify(auth.substr(scheme.size()));
      if (p.ok()) {
        caller.principal = *p;
      } else {
        denied = p.status();
      }
    }
  }
  if (denied.ok() && caller.principal.role < caller.policy->role) {
    denied = absl::PermissionDeniedError(
        absl::StrCat("role ", RoleName(caller.principal.role), " may not call ",
                     method, " (needs ", RoleName(caller.policy->role), ")"));
  }
  if (denied.ok() && !header.empty() && header != caller.principal.tenant) {
    if (!caller.admin()) {
      denied = absl::PermissionDeniedError(absl::StrCat(
          "only admins may act in another tenant (", kTenantHeader, ")"));
    } else if (!TokenStore::IsValidTenant(header)) {
      denied = absl::InvalidArgumentError(absl::StrCat(
          "invalid tenant '", Abbreviate(header), "' in ", kTenantHeader));
    } else {
      caller.principal.tenant = header;
    }
  }
  if (!denied.ok()) {
    Audit(caller.principal.tenant, caller.principal.token_id, caller.peer,
          method, "", denied);
    return denied;
  }
  return caller;
}

void Authorizer::Finished(const Caller& caller, const std::string& resource,
                          const absl::Status& status) {
  const bool denied = status.code() == absl::StatusCode::kPermissionDenied ||
                      status.code() == absl::StatusCode::kUnauthenticated;
  if (caller.policy == nullptr || !(caller.policy->mutating || denied)) return;
  Audit(caller.principal.tenant, caller.principal.token_id, caller.peer,
        caller.policy->method, resource, status);
}

void Authorizer::Audit(const std::string& tenant, const std::string& token_id,
                       const std::string& peer, const std::string& method,
                       const std::string& resource,
                       const absl::Status& status) {
  if (options_.audit == nullptr) return;
  AuditEntry e;
  e.tenant = tenant;
  e.token_id = token_id;
  e.peer = peer;
  e.method = method;
  e.resource = Abbreviate(resource, 256);
  e.code = absl::StatusCodeToString(status.code());
  if (!status.ok()) e.message = Abbreviate(status.message(), 512);
  options_.audit->Record(e);
}

absl::StatusOr<StreamSlot> Authorizer::AcquireStream(const Caller& caller) {
  int64_t limit = 0;
  if (options_.quotas != nullptr) {
    auto q = options_.quotas->Get(caller.tenant());
    if (!q.ok()) return q.status();
    limit = q->max_streams;
  }
  std::lock_guard<std::mutex> lock(mu_);
  int64_t& open = streams_[caller.tenant()];
  absl::Status s = CheckQuota(caller.tenant(), "max_streams", limit, open, 1);
  if (!s.ok()) return s;
  ++open;
  return StreamSlot(this, caller.tenant());
}

void Authorizer::ReleaseStream(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(tenant);
  if (it != streams_.end() && --it->second <= 0) streams_.erase(it);
}

}  // namespace mergeserve
