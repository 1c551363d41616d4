// Per-tenant limits: jobs queued or running, bytes stored on the server,
// bytes of one upload, streaming calls open at once. The server's flags set
// the defaults; an admin can set any of them per tenant (0 = unlimited).
#ifndef MERGESERVE_AUTH_TENANT_QUOTAS_H_
#define MERGESERVE_AUTH_TENANT_QUOTAS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/store/database.h"

namespace mergeserve {

struct Quota {
  int64_t max_jobs = 0;          // queued + running merge jobs
  int64_t max_stored_bytes = 0;  // uploads, results (and datasets)
  int64_t max_upload_bytes = 0;  // one upload
  int64_t max_streams = 0;       // streaming calls open at once
};

// An override per field; unset fields take the server's default.
struct QuotaOverride {
  std::optional<int64_t> max_jobs, max_stored_bytes, max_upload_bytes,
      max_streams;
};

class TenantQuotas {
 public:
  static absl::StatusOr<std::unique_ptr<TenantQuotas>> Open(
      std::shared_ptr<Database> db, Quota defaults);

  // The tenant's effective quota (defaults with its overrides applied).
  absl::StatusOr<Quota> Get(const std::string& tenant) const;
  // Merges `change` into the tenant's overrides; returns the effective quota.
  absl::StatusOr<Quota> Set(const std::string& tenant,
                            const QuotaOverride& change);
  const Quota& defaults() const { return defaults_; }

 private:
  TenantQuotas() = default;
  std::shared_ptr<Database> db_;
  Quota defaults_;
};

// RESOURCE_EXHAUSTED naming the quota when used + adding > limit (limit 0 =
// unlimited).
absl::Status CheckQuota(const std::string& tenant, const char* quota,
                        int64_t limit, int64_t used, int64_t adding);

}  // namespace mergeserve

#endif  // MERGESERVE_AUTH_TENANT_QUOTAS_H_
