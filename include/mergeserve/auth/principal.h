// Who is calling: the tenant a bearer token belongs to and what it may do.
#ifndef MERGESERVE_AUTH_PRINCIPAL_H_
#define MERGESERVE_AUTH_PRINCIPAL_H_

#include <optional>
#include <string>

namespace mergeserve {

// Ordered: each role may do everything the roles below it may.
//   reader  get, list, download, watch, evaluate, analyze
//   writer  also register, upload, merge, sweep, cancel, delete (own tenant)
//   admin   also tokens, quotas, publishing, and acting in any tenant
enum class Role { kReader = 1, kWriter = 2, kAdmin = 3 };

const char* RoleName(Role role);
std::optional<Role> RoleFromName(const std::string& name);

// The tenant of the development mode (no authentication), and the one that
// data from releases before tenants were introduced belongs to.
inline constexpr char kDefaultTenant[] = "default";

struct Principal {
  std::string tenant;  // whose resources the call sees
  Role role = Role::kReader;
  std::string token_id;  // the token's public id ("-" in development mode)
};

}  // namespace mergeserve

#endif  // MERGESERVE_AUTH_PRINCIPAL_H_
