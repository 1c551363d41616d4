// mergeserve.v1.AdminService: API tokens, tenant quotas and publishing
// checkpoints, for admins (the same operations as `mergeserve token` on the
// server's host).
#ifndef MERGESERVE_GRPC_ADMIN_SERVICE_H_
#define MERGESERVE_GRPC_ADMIN_SERVICE_H_

#include "grpc/authorizer.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/admin.grpc.pb.h"

namespace mergeserve {

class AdminServiceImpl final : public v1::AdminService::CallbackService {
 public:
  // `tokens` is null in development mode (token calls then fail).
  AdminServiceImpl(TokenStore* tokens, TenantQuotas& quotas,
                   CheckpointRegistry& registry, JobManager& jobs,
                   Authorizer& auth)
      : tokens_(tokens),
        quotas_(quotas),
        registry_(registry),
        jobs_(jobs),
        auth_(auth) {}

  grpc::ServerUnaryReactor* CreateToken(
      grpc::CallbackServerContext* ctx, const v1::CreateTokenRequest* request,
      v1::CreateTokenResponse* response) override;
  grpc::ServerUnaryReactor* ListTokens(
      grpc::CallbackServerContext* ctx, const v1::ListTokensRequest* request,
      v1::ListTokensResponse* response) override;
  grpc::ServerUnaryReactor* RevokeToken(grpc::CallbackServerContext* ctx,
                                        const v1::RevokeTokenRequest* request,
                                        v1::Token* response) override;
  grpc::ServerUnaryReactor* GetQuota(grpc::CallbackServerContext* ctx,
                                     const v1::GetQuotaRequest* request,
                                     v1::QuotaResponse* response) override;
  grpc::ServerUnaryReactor* SetQuota(grpc::CallbackServerContext* ctx,
                                     const v1::SetQuotaRequest* request,
                                     v1::QuotaResponse* response) override;
  grpc::ServerUnaryReactor* PublishCheckpoint(
      grpc::CallbackServerContext* ctx,
      const v1::PublishCheckpointRequest* request,
      v1::Checkpoint* response) override;

 private:
  absl::Status FillQuota(const std::string& tenant, v1::QuotaResponse* out);

  TokenStore* tokens_;
  TenantQuotas& quotas_;
  CheckpointRegistry& registry_;
  JobManager& jobs_;
  Authorizer& auth_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_ADMIN_SERVICE_H_
