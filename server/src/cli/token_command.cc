#include "cli/token_command.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/cli_args.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/base/exit_codes.h"
#include "mergeserve/store/database.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

constexpr char kUsage[] =
    R"(usage: mergeserve token COMMAND (--data-dir DIR | --database URL) [options]

Administers the API tokens of the server whose data dir is DIR (it may be
running). A token belongs to a tenant and has a role:
  reader  get, list, download, watch, evaluate, analyze
  writer  also register, upload, merge, sweep, cancel and delete
  admin   also tokens, quotas, publishing, and acting in any tenant
The server stores only a hash of each token; create shows it once.

commands:
  create --tenant T --role reader|writer|admin [--expires 30d]
         [--description TEXT]   prints the token alone on its last line
  list [--tenant T]             every token (or one tenant's), newest first
  revoke ID                     ID is the token's public id (tok_...)
  import --tenant T --role R --token-file F
                                record a token made elsewhere (e.g. from a
                                Kubernetes Secret); idempotent

options:
  --data-dir DIR   the server's data dir (its SQLite database)
  --database URL   the server's --database instead (postgresql://...; the
                   password from $PGPASSWORD or --database-password-file)
  --database-password-file F
  --json           machine-readable output
)";

nlohmann::json ToJson(const TokenRecord& t) {
  return {{"id", t.id},
          {"tenant", t.tenant},
          {"role", RoleName(t.role)},
          {"description", t.description},
          {"create_time", FormatUtcTime(t.create_ms)},
          {"expire_time", t.expire_ms ? FormatUtcTime(t.expire_ms) : ""},
          {"revoke_time", t.revoke_ms ? FormatUtcTime(t.revoke_ms) : ""}};
}

}  // namespace

int RunTokenCommand(const std::vector<std::string>& argv) {
  auto parsed = ParseCliArgs(argv, {{"data-dir", true},
                                    {"database", true},
                                    {"database-password-file", true},
                                    {"tenant", true},
                                    {"role", true},
                                    {"expires", true},
                                    {"description", true},
                                    {"token-file", true},
                                    {"json", false}});
  if (!parsed.ok()) {
    std::fprintf(stderr, "mergeserve token: %s\n\n%s",
                 std::string(parsed.status().message()).c_str(), kUsage);
    return 2;
  }
  const CliArgs& a = *parsed;
  if (a.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (a.positional.empty() || !(a.Has("data-dir") || a.Has("database"))) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  std::string url = a.Get("database");
  if (url.empty()) {
    // The first token may come before the server ever ran.
    std::error_code ec;
    std::filesystem::create_directories(a.Get("data-dir"), ec);
    url = a.Get("data-dir") + "/mergeserve.db";
  }
  DatabaseOpenOptions dbo;
  dbo.password_file = a.Get("database-password-file");
  auto db = OpenDatabase(url, dbo);
  if (!db.ok()) return FailWith(db.status());
  auto store = TokenStore::Open(*std::move(db));
  if (!store.ok()) return FailWith(store.status());
  const std::string& verb = a.positional[0];
  const bool json = a.Bool("json");
  if (verb == "create") {
    auto role = RoleFromName(a.Get("role"));
    if (!role) {
      return FailWith(
          absl::InvalidArgumentError("--role must be reader, writer or admin"));
    }
    int64_t ttl = 0;
    if (a.Has("expires")) {
      auto d = ParseDurationMs(a.Get("expires"));
      if (!d.ok()) return FailWith(d.status());
      ttl = *d;
    }
    auto t =
        (*store)->Create(a.Get("tenant"), *role, ttl, a.Get("description"));
    if (!t.ok()) return FailWith(t.status());
    if (json) {
      nlohmann::json j = ToJson(t->record);
      j["token"] = t->secret;
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::fprintf(stderr,
                 "token %s for tenant '%s', role %s, expires %s; it is shown "
                 "only now:\n",
                 t->record.id.c_str(), t->record.tenant.c_str(),
                 RoleName(t->record.role),
                 FormatUtcTime(t->record.expire_ms).c_str());
    std::printf("%s\n", t->secret.c_str());
    return 0;
  }
  if (verb == "import") {
    auto role = RoleFromName(a.Get("role"));
    if (!role) {
      return FailWith(
          absl::InvalidArgumentError("--role must be reader, writer or admin"));
    }
    std::ifstream in(a.Get("token-file"));
    std::string token;
    if (!in || !(in >> token)) {
      return FailWith(absl::NotFoundError(
          absl::StrCat("cannot read --token-file ", a.Get("token-file"))));
    }
    auto t = (*store)->Import(token, a.Get("tenant"), *role,
                              a.Get("description", "imported"));
    if (!t.ok()) return FailWith(t.status());
    if (json) {
      std::cout << ToJson(*t).dump() << std::endl;
    } else {
      std::printf("imported %s for tenant '%s', role %s\n", t->id.c_str(),
                  t->tenant.c_str(), RoleName(t->role));
    }
    return 0;
  }
  if (verb == "list") {
    auto tokens = (*store)->List(a.Get("tenant"));
    if (!tokens.ok()) return FailWith(tokens.status());
    if (json) {
      nlohmann::json arr = nlohmann::json::array();
      for (const TokenRecord& t : *tokens) arr.push_back(ToJson(t));
      std::cout << arr.dump() << std::endl;
      return 0;
    }
    std::printf("%-18s %-16s %-7s %-21s %-21s %s\n", "ID", "TENANT", "ROLE",
                "EXPIRES", "REVOKED", "DESCRIPTION");
    for (const TokenRecord& t : *tokens) {
      std::printf("%-18s %-16s %-7s %-21s %-21s %s\n", t.id.c_str(),
                  t.tenant.c_str(), RoleName(t.role),
                  FormatUtcTime(t.expire_ms).c_str(),
                  FormatUtcTime(t.revoke_ms).c_str(), t.description.c_str());
    }
    return 0;
  }
  if (verb == "revoke") {
    if (a.positional.size() != 2) {
      std::fprintf(stderr, "mergeserve token revoke: expected ID\n");
      return 2;
    }
    auto t = (*store)->Revoke(a.positional[1]);
    if (!t.ok()) return FailWith(t.status());
    if (json) {
      std::cout << ToJson(*t).dump() << std::endl;
    } else {
      std::printf("revoked %s (tenant '%s')\n", t->id.c_str(),
                  t->tenant.c_str());
    }
    return 0;
  }
  std::fprintf(stderr, "mergeserve token: unknown command '%s'\n\n%s",
               verb.c_str(), kUsage);
  return 2;
}

}  // namespace mergeserve
