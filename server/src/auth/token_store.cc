#include "mergeserve/auth/token_store.h"

#include <cctype>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/secure_random.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

constexpr char kPrefix[] = "mst_";
constexpr size_t kIdHex = 12;
constexpr size_t kSecretHex = 64;

constexpr char kColumns[] =
    "id, tenant, role, description, create_ms, expire_ms, revoke_ms";

TokenRecord FromRow(const SqlRow& r) {
  TokenRecord t;
  t.id = SqlString(r[0]);
  t.tenant = SqlString(r[1]);
  t.role = static_cast<Role>(SqlInt(r[2]));
  t.description = SqlString(r[3]);
  t.create_ms = SqlInt(r[4]);
  t.expire_ms = SqlInt(r[5]);
  t.revoke_ms = SqlInt(r[6]);
  return t;
}

bool IsHex(const std::string& s) {
  for (char c : s) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) ||
        std::isupper(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

absl::Status Unauthenticated(const std::string& why) {
  return absl::UnauthenticatedError(why);
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kReader:
      return "reader";
    case Role::kWriter:
      return "writer";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::optional<Role> RoleFromName(const std::string& name) {
  if (name == "reader") return Role::kReader;
  if (name == "writer") return Role::kWriter;
  if (name == "admin") return Role::kAdmin;
  return std::nullopt;
}

bool TokenStore::IsValidTenant(const std::string& tenant) {
  if (tenant.empty() || tenant.size() > 64 || tenant == "." || tenant == "..") {
    return false;
  }
  for (char c : tenant) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(
    std::shared_ptr<Database> db) {
  std::unique_ptr<TokenStore> s(new TokenStore());
  s->db_ = std::move(db);
  Database* d = s->db_.get();
  MS_RETURN_IF_ERROR(d->Migrate("auth", {{1, "tokens", [d] {
                                            return d->Exec(R"sql(
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  role BIGINT NOT NULL,
  secret_sha256 TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  create_ms BIGINT NOT NULL,
  expire_ms BIGINT NOT NULL DEFAULT 0,
  revoke_ms BIGINT NOT NULL DEFAULT 0
))sql");
                                          }}}));
  return s;
}

absl::StatusOr<NewToken> TokenStore::Create(const std::string& tenant,
                                            Role role, int64_t ttl_ms,
                                            const std::string& description) {
  if (!IsValidTenant(tenant)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tenant '", Abbreviate(tenant),
                     "': use 1-64 letters, digits, '.', '_' or '-'"));
  }
  if (role != Role::kReader && role != Role::kWriter && role != Role::kAdmin) {
    return absl::InvalidArgumentError("role must be reader, writer or admin");
  }
  if (ttl_ms < 0) return absl::InvalidArgumentError("negative expiry");
  if (ttl_ms > kMaxDurationMs) {
    return absl::InvalidArgumentError("expiry is longer than 100 years");
  }
  if (description.size() > 256) {
    return absl::InvalidArgumentError("description is longer than 256 bytes");
  }
  MS_ASSIGN_OR_RETURN(std::string id_hex, SecureRandomHex(kIdHex / 2));
  MS_ASSIGN_OR_RETURN(std::string secret, SecureRandomHex(kSecretHex / 2));
  NewToken t;
  t.record.id = "tok_" + id_hex;
  t.record.tenant = tenant;
  t.record.role = role;
  t.record.description = description;
  t.record.create_ms = NowMs();
  t.record.expire_ms = ttl_ms > 0 ? t.record.create_ms + ttl_ms : 0;
  t.secret = absl::StrCat(kPrefix, id_hex, "_", secret);
  MS_RETURN_IF_ERROR(db_->Exec(
      absl::StrCat("INSERT INTO tokens (", kColumns,
                   ", secret_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
      {t.record.id, tenant, static_cast<int64_t>(role), description,
       t.record.create_ms, t.record.expire_ms, int64_t{0}, Sha256Hex(secret)}));
  return t;
}

absl::StatusOr<std::vector<TokenRecord>> TokenStore::List(
    const std::string& tenant) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              " FROM tokens WHERE ? = '' OR tenant = ? "
                              "ORDER BY create_ms DESC, id"),
                 {tenant, tenant}));
  std::vector<TokenRecord> out;
  for (const SqlRow& r : rows) out.push_back(FromRow(r));
  return out;
}

absl::StatusOr<TokenRecord> TokenStore::Get(const std::string& id) const {
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns, " FROM tokens WHERE id = ?"),
                 {id}));
  if (rows.empty()) {
    return absl::NotFoundError(
        absl::StrCat("token '", Abbreviate(id), "' not found"));
  }
  return FromRow(rows[0]);
}

absl::StatusOr<TokenRecord> TokenStore::Revoke(const std::string& id) {
  MS_ASSIGN_OR_RETURN(TokenRecord t, Get(id));
  if (t.revoke_ms == 0) {
    t.revoke_ms = NowMs();
    MS_RETURN_IF_ERROR(db_->Exec(
        "UPDATE tokens SET revoke_ms = ? WHERE id = ? AND revoke_ms = 0",
        {t.revoke_ms, id}));
  }
  return t;
}

namespace {

// mst_<12 hex>_<64 hex> -> (id, secret); false when malformed.
bool SplitToken(const std::string& token, std::string* id,
                std::string* secret) {
  const size_t prefix = sizeof(kPrefix) - 1;
  if (token.size() != prefix + kIdHex + 1 + kSecretHex ||
      token.compare(0, prefix, kPrefix) != 0 || token[prefix + kIdHex] != '_') {
    return false;
  }
  const std::string id_hex = token.substr(prefix, kIdHex);
  *secret = token.substr(prefix + kIdHex + 1);
  *id = "tok_" + id_hex;
  return IsHex(id_hex) && IsHex(*secret);
}

}  // namespace

absl::StatusOr<TokenRecord> TokenStore::Import(const std::string& token,
                                               const std::string& tenant,
                                               Role role,
                                               const std::string& description) {
  std::string id, secret;
  if (!SplitToken(token, &id, &secret)) {
    return absl::InvalidArgumentError(
        "a token reads mst_<12 hex digits>_<64 hex digits>");
  }
  if (!IsValidTenant(tenant)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tenant '", Abbreviate(tenant), "'"));
  }
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query("SELECT secret_sha256 FROM tokens WHERE id = ?", {id}));
  if (!rows.empty()) {
    if (!ConstantTimeEquals(Sha256Hex(secret), SqlString(rows[0][0]))) {
      return absl::AlreadyExistsError(
          absl::StrCat("token id ", id, " is taken by another token"));
    }
    return Get(id);
  }
  TokenRecord t;
  t.id = id;
  t.tenant = tenant;
  t.role = role;
  t.description = description;
  t.create_ms = NowMs();
  MS_RETURN_IF_ERROR(db_->Exec(
      absl::StrCat("INSERT INTO tokens (", kColumns,
                   ", secret_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
      {t.id, tenant, static_cast<int64_t>(role), description, t.create_ms,
       int64_t{0}, int64_t{0}, Sha256Hex(secret)}));
  return t;
}

absl::StatusOr<Principal> TokenStore::Verify(const std::string& token) const {
  std::string id, secret;
  if (!SplitToken(token, &id, &secret)) {
    return Unauthenticated("malformed token (expected mst_<id>_<secret>)");
  }
  MS_ASSIGN_OR_RETURN(
      auto rows,
      db_->Query(absl::StrCat("SELECT ", kColumns,
                              ", secret_sha256 FROM tokens WHERE id = ?"),
                 {id}));
  // Unknown ids and wrong secrets read the same: the id alone proves
  // nothing.
  if (rows.empty() ||
      !ConstantTimeEquals(Sha256Hex(secret), SqlString(rows[0][7]))) {
    return Unauthenticated("invalid token");
  }
  const TokenRecord t = FromRow(rows[0]);
  if (t.revoke_ms != 0) {
    return Unauthenticated(absl::StrCat("token ", t.id, " was revoked"));
  }
  if (t.expire_ms != 0 && NowMs() >= t.expire_ms) {
    return Unauthenticated(absl::StrCat("token ", t.id, " has expired"));
  }
  return Principal{t.tenant, t.role, t.id};
}

}  // namespace mergeserve
