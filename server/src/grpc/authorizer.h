// Identity and authorization for every RPC but health, in one place: the
// table of what role each method needs and whether it mutates, bearer-token
// authentication (or the development mode's implicit admin), the acting
// tenant, per-tenant streaming slots, and the audit log of every mutating
// and every denied call. Handlers start with UnaryCall / StreamCall
// (grpc/call.h), which go through here.
#ifndef MERGESERVE_GRPC_AUTHORIZER_H_
#define MERGESERVE_GRPC_AUTHORIZER_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "mergeserve/auth/audit_log.h"
#include "mergeserve/auth/principal.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/auth/token_store.h"

namespace mergeserve {

// What one RPC needs. `method` is "package.Service/Method".
struct RpcPolicy {
  const char* method;
  Role role;
  bool mutating;
};
// Every RPC the server serves except grpc.health.v1.Health.
const std::vector<RpcPolicy>& RpcPolicies();
// nullptr for a method not in the table.
const RpcPolicy* FindRpcPolicy(const std::string& method);

// The request header an admin names another tenant with.
inline constexpr char kTenantHeader[] = "x-mergeserve-tenant";

struct Caller {
  Principal principal;  // principal.tenant: the acting tenant
  std::string peer;
  const RpcPolicy* policy = nullptr;
  bool admin() const { return principal.role == Role::kAdmin; }
  const std::string& tenant() const { return principal.tenant; }
};

class Authorizer;

// A tenant's streaming call in progress (released on destruction).
class StreamSlot {
 public:
  StreamSlot() = default;
  StreamSlot(Authorizer* owner, std::string tenant)
      : owner_(owner), tenant_(std::move(tenant)) {}
  StreamSlot(StreamSlot&& o) noexcept { *this = std::move(o); }
  StreamSlot& operator=(StreamSlot&& o) noexcept;
  ~StreamSlot() { Release(); }
  // Frees the slot now (a call frees it as it finishes, before gRPC tells
  // the client, so the client's next stream finds it free).
  void Release();

 private:
  Authorizer* owner_ = nullptr;
  std::string tenant_;
};

class Authorizer {
 public:
  struct Options {
    // null: development mode, every caller is an admin of kDefaultTenant.
    const TokenStore* tokens = nullptr;
    const TenantQuotas* quotas = nullptr;  // null: no stream limit
    AuditLog* audit = nullptr;             // null: not recorded
  };
  explicit Authorizer(Options options) : options_(options) {}

  // Authenticates the caller and checks `method`'s role; a refusal is
  // UNAUTHENTICATED or PERMISSION_DENIED and is audited here.
  absl::StatusOr<Caller> Authorize(grpc::ServerContextBase* ctx,
                                   const std::string& method);
  // Records a finished call when it mutated or was denied.
  void Finished(const Caller& caller, const std::string& resource,
                const absl::Status& status);
  // A streaming slot of the caller's tenant (RESOURCE_EXHAUSTED naming
  // the max_streams quota when all are taken).
  absl::StatusOr<StreamSlot> AcquireStream(const Caller& caller);
  bool development_mode() const { return options_.tokens == nullptr; }

 private:
  friend class StreamSlot;
  void ReleaseStream(const std::string& tenant);
  void Audit(const std::string& tenant, const std::string& token_id,
             const std::string& peer, const std::string& method,
             const std::string& resource, const absl::Status& status);

  Options options_;
  std::mutex mu_;
  std::map<std::string, int64_t> streams_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_AUTHORIZER_H_
