#include "mergeserve/auth/tenant_quotas.h"

#include "absl/strings/str_cat.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

constexpr const char* kFields[] = {"max_jobs", "max_stored_bytes",
                                   "max_upload_bytes", "max_streams"};

std::optional<int64_t>* Field(QuotaOverride& o, int i) {
  std::optional<int64_t>* f[] = {&o.max_jobs, &o.max_stored_bytes,
                                 &o.max_upload_bytes, &o.max_streams};
  return f[i];
}

int64_t* Field(Quota& q, int i) {
  int64_t* f[] = {&q.max_jobs, &q.max_stored_bytes, &q.max_upload_bytes,
                  &q.max_streams};
  return f[i];
}

}  // namespace

absl::Status CheckQuota(const std::string& tenant, const char* quota,
                        int64_t limit, int64_t used, int64_t adding) {
  if (limit <= 0 || used + adding <= limit) return absl::OkStatus();
  const bool bytes = std::string(quota).find("bytes") != std::string::npos;
  auto show = [&](int64_t v) {
    return bytes ? FormatBytes(v) : std::to_string(v);
  };
  return absl::ResourceExhaustedError(absl::StrCat(
      "tenant '", tenant, "' is over its ", quota, " quota (", show(used),
      " in use + ", show(adding), " requested > ", show(limit),
      "); ask an admin to raise it (mergectl quota set)"));
}

absl::StatusOr<std::unique_ptr<TenantQuotas>> TenantQuotas::Open(
    std::shared_ptr<Database> db, Quota defaults) {
  std::unique_ptr<TenantQuotas> q(new TenantQuotas());
  q->db_ = std::move(db);
  q->defaults_ = defaults;
  Database* d = q->db_.get();
  MS_RETURN_IF_ERROR(d->Migrate("quotas", {{1, "quotas", [d] {
                                              // NULL: the server's default.
                                              return d->Exec(R"sql(
CREATE TABLE IF NOT EXISTS quotas (
  tenant TEXT PRIMARY KEY,
  max_jobs BIGINT,
  max_stored_bytes BIGINT,
  max_upload_bytes BIGINT,
  max_streams BIGINT
))sql");
                                            }}}));
  return q;
}

absl::StatusOr<Quota> TenantQuotas::Get(const std::string& tenant) const {
  Quota q = defaults_;
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT max_jobs, max_stored_bytes, max_upload_bytes, "
                 "max_streams FROM quotas WHERE tenant = ?",
                 {tenant}));
  if (!rows.empty()) {
    for (int i = 0; i < 4; ++i) {
      if (!std::holds_alternative<std::nullptr_t>(rows[0][i])) {
        *Field(q, i) = SqlInt(rows[0][i]);
      }
    }
  }
  return q;
}

absl::StatusOr<Quota> TenantQuotas::Set(const std::string& tenant,
                                        const QuotaOverride& change) {
  if (!TokenStore::IsValidTenant(tenant)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tenant '", Abbreviate(tenant), "'"));
  }
  QuotaOverride c = change;
  for (int i = 0; i < 4; ++i) {
    if (*Field(c, i) && **Field(c, i) < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(kFields[i], " must be >= 0 (0 = unlimited)"));
    }
  }
  MS_RETURN_IF_ERROR(db_->Transaction([&]() -> absl::Status {
    MS_RETURN_IF_ERROR(db_->Exec(
        "INSERT INTO quotas (tenant) VALUES (?) ON CONFLICT DO NOTHING",
        {tenant}));
    for (int i = 0; i < 4; ++i) {
      if (!*Field(c, i)) continue;
      MS_RETURN_IF_ERROR(
          db_->Exec(absl::StrCat("UPDATE quotas SET ", kFields[i],
                                 " = ? WHERE tenant = ?"),
                    {**Field(c, i), tenant}));
    }
    return absl::OkStatus();
  }));
  return Get(tenant);
}

}  // namespace mergeserve
