// API tokens: created for a tenant and a role, shown once, stored only as a
// SHA-256 of their secret, verified on every call, revocable, optionally
// expiring. A token reads "mst_<id>_<secret>": the 12-hex-digit id is public
// (logs, audit, `token list`, revoke), the 64-hex-digit secret is not.
// Lives in the server's database; `mergeserve token` administers it with
// the server down or up.
#ifndef MERGESERVE_AUTH_TOKEN_STORE_H_
#define MERGESERVE_AUTH_TOKEN_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/auth/principal.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/store/database.h"

namespace mergeserve {

struct TokenRecord {
  std::string id;
  std::string tenant;
  Role role = Role::kReader;
  std::string description;
  int64_t create_ms = 0;
  int64_t expire_ms = 0;  // 0: never
  int64_t revoke_ms = 0;  // 0: valid
};

struct NewToken {
  TokenRecord record;
  std::string secret;  // the whole token, shown once
};

class TokenStore {
 public:
  static absl::StatusOr<std::unique_ptr<TokenStore>> Open(
      std::shared_ptr<Database> db);

  // ttl_ms 0: never expires.
  absl::StatusOr<NewToken> Create(const std::string& tenant, Role role,
                                  int64_t ttl_ms,
                                  const std::string& description);
  // Records a token made elsewhere (e.g. a Kubernetes Secret, so a
  // deployment can start with a known admin token). Idempotent for the
  // same token; ALREADY_EXISTS when its id is taken by another secret.
  absl::StatusOr<TokenRecord> Import(const std::string& token,
                                     const std::string& tenant, Role role,
                                     const std::string& description);
  // Every token of `tenant` ("" = all tenants), newest first.
  absl::StatusOr<std::vector<TokenRecord>> List(
      const std::string& tenant) const;
  absl::StatusOr<TokenRecord> Get(const std::string& id) const;
  // NOT_FOUND for an unknown id; revoking twice keeps the first time.
  absl::StatusOr<TokenRecord> Revoke(const std::string& id);
  // UNAUTHENTICATED (malformed, unknown, wrong secret, expired or revoked)
  // or the principal the token stands for.
  absl::StatusOr<Principal> Verify(const std::string& token) const;

  // Letters, digits, '.', '_', '-'; 1 to 64 characters.
  static bool IsValidTenant(const std::string& tenant);

 private:
  TokenStore() = default;
  std::shared_ptr<Database> db_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_AUTH_TOKEN_STORE_H_
