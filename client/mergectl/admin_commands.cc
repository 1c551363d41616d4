// mergectl verbs for admins (AdminService): API tokens, tenant quotas and
// publishing checkpoints to every tenant.
#include <cstdio>
#include <iostream>

#include "cli.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/v1/admin.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mergectl {
namespace {

using mergeserve::v1::AdminService;

std::string Time(const google::protobuf::Timestamp& t) {
  return mergeserve::FormatUtcTime(t.seconds() * 1000);
}

std::string RoleWord(mergeserve::v1::Role r) {
  std::string w = mergeserve::v1::Role_Name(r).substr(5);  // ROLE_
  for (char& c : w) c = static_cast<char>(std::tolower(c));
  return w;
}

nlohmann::json ToJson(const mergeserve::v1::Token& t) {
  return {{"id", t.id()},
          {"tenant", t.tenant()},
          {"role", RoleWord(t.role())},
          {"description", t.description()},
          {"create_time", Time(t.create_time())},
          {"expire_time", t.has_expire_time() ? Time(t.expire_time()) : ""},
          {"revoke_time", t.has_revoke_time() ? Time(t.revoke_time()) : ""}};
}

void PrintQuota(const mergeserve::v1::QuotaResponse& q, bool json) {
  auto limit = [](int64_t v, bool bytes) {
    if (v == 0) return std::string("unlimited");
    return bytes ? HumanBytes(v) : std::to_string(v);
  };
  if (json) {
    std::cout << nlohmann::json(
                     {{"tenant", q.tenant()},
                      {"max_jobs", q.quota().max_jobs()},
                      {"max_stored_bytes", q.quota().max_stored_bytes()},
                      {"max_upload_bytes", q.quota().max_upload_bytes()},
                      {"max_streams", q.quota().max_streams()},
                      {"jobs_active", q.jobs_active()},
                      {"stored_bytes", q.stored_bytes()}})
                     .dump()
              << std::endl;
    return;
  }
  std::printf("tenant:            %s\n", q.tenant().c_str());
  std::printf("jobs:              %lld active, limit %s\n",
              static_cast<long long>(q.jobs_active()),
              limit(q.quota().max_jobs(), false).c_str());
  std::printf("stored bytes:      %s, limit %s\n",
              HumanBytes(q.stored_bytes()).c_str(),
              limit(q.quota().max_stored_bytes(), true).c_str());
  std::printf("upload bytes:      limit %s per upload\n",
              limit(q.quota().max_upload_bytes(), true).c_str());
  std::printf("streams:           limit %s at once\n",
              limit(q.quota().max_streams(), false).c_str());
}

}  // namespace

int RunAdminVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch) {
  const std::string& verb = args.positional[0];
  if (verb != "token" && verb != "quota" && verb != "publish") return -1;
  auto stub = AdminService::NewStub(ch);
  grpc::ClientContext ctx;
  const auto& pos = args.positional;
  const std::string sub = pos.size() > 1 ? pos[1] : "";
  if (verb == "publish") {
    if (pos.size() != 2) {
      std::fprintf(stderr, "mergectl publish: expected NAME\n");
      return 2;
    }
    mergeserve::v1::PublishCheckpointRequest req;
    req.set_name(pos[1]);
    req.set_published(!args.unpublish);
    mergeserve::v1::Checkpoint out;
    grpc::Status s = stub->PublishCheckpoint(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << nlohmann::json({{"name", out.name()},
                                   {"tenant", out.tenant()},
                                   {"published", out.published()}})
                       .dump()
                << std::endl;
    } else {
      std::printf("%s %s\n", out.published() ? "published" : "unpublished",
                  out.name().c_str());
    }
    return 0;
  }
  if (verb == "quota") {
    mergeserve::v1::QuotaResponse out;
    grpc::Status s;
    if (sub == "get") {
      mergeserve::v1::GetQuotaRequest req;
      req.set_tenant(pos.size() > 2 ? pos[2] : "");
      s = stub->GetQuota(&ctx, req, &out);
    } else if (sub == "set") {
      mergeserve::v1::SetQuotaRequest req;
      req.set_tenant(pos.size() > 2 ? pos[2] : "");
      auto* q = req.mutable_quota();
      for (const auto& [k, v] : args.quota) {
        int64_t n = 0;
        if (k.find("bytes") != std::string::npos) {
          auto b = mergeserve::ParseByteSize(v);
          if (!b.ok()) {
            std::fprintf(stderr, "mergectl: --%s: %s\n", k.c_str(),
                         std::string(b.status().message()).c_str());
            return 2;
          }
          n = *b;
        } else {
          char* end = nullptr;
          n = std::strtoll(v.c_str(), &end, 10);
          if (end == v.c_str() || *end != 0 || n < 0) {
            std::fprintf(stderr, "mergectl: --%s takes a count\n", k.c_str());
            return 2;
          }
        }
        if (k == "max-jobs") q->set_max_jobs(n);
        if (k == "max-stored-bytes") q->set_max_stored_bytes(n);
        if (k == "max-upload-bytes") q->set_max_upload_bytes(n);
        if (k == "max-streams") q->set_max_streams(n);
      }
      s = stub->SetQuota(&ctx, req, &out);
    } else {
      std::fprintf(stderr, "mergectl quota: expected get or set [TENANT]\n");
      return 2;
    }
    if (!s.ok()) return Fail(s, args.server);
    PrintQuota(out, args.json);
    return 0;
  }
  // token
  if (sub == "create") {
    mergeserve::v1::CreateTokenRequest req;
    req.set_tenant(args.tenant);
    mergeserve::v1::Role role;
    std::string upper = "ROLE_" + args.role;
    for (char& c : upper) c = static_cast<char>(std::toupper(c));
    if (args.role.empty() || !mergeserve::v1::Role_Parse(upper, &role) ||
        role == mergeserve::v1::ROLE_UNSPECIFIED) {
      std::fprintf(stderr,
                   "mergectl token create: --role reader|writer|admin\n");
      return 2;
    }
    req.set_role(role);
    if (!args.expires.empty()) {
      auto ttl = mergeserve::ParseDurationMs(args.expires);
      if (!ttl.ok()) {
        std::fprintf(stderr, "mergectl: --expires: %s\n",
                     std::string(ttl.status().message()).c_str());
        return 2;
      }
      req.set_ttl_seconds(*ttl / 1000);
    }
    req.set_description(args.description);
    mergeserve::v1::CreateTokenResponse out;
    grpc::Status s = stub->CreateToken(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      nlohmann::json j = ToJson(out.token());
      j["token"] = out.secret();
      std::cout << j.dump() << std::endl;
    } else {
      std::fprintf(stderr,
                   "token %s for tenant '%s', role %s; it is shown only "
                   "now:\n",
                   out.token().id().c_str(), out.token().tenant().c_str(),
                   RoleWord(out.token().role()).c_str());
      std::printf("%s\n", out.secret().c_str());
    }
    return 0;
  }
  if (sub == "list") {
    mergeserve::v1::ListTokensRequest req;
    req.set_tenant(pos.size() > 2 ? pos[2] : "");
    mergeserve::v1::ListTokensResponse out;
    grpc::Status s = stub->ListTokens(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& t : out.tokens()) j.push_back(ToJson(t));
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::printf("%-18s %-16s %-7s %-21s %-21s %s\n", "ID", "TENANT", "ROLE",
                "EXPIRES", "REVOKED", "DESCRIPTION");
    for (const auto& t : out.tokens()) {
      std::printf("%-18s %-16s %-7s %-21s %-21s %s\n", t.id().c_str(),
                  t.tenant().c_str(), RoleWord(t.role()).c_str(),
                  Time(t.expire_time()).c_str(), Time(t.revoke_time()).c_str(),
                  t.description().c_str());
    }
    return 0;
  }
  if (sub == "revoke" && pos.size() == 3) {
    mergeserve::v1::RevokeTokenRequest req;
    req.set_id(pos[2]);
    mergeserve::v1::Token out;
    grpc::Status s = stub->RevokeToken(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << ToJson(out).dump() << std::endl;
    } else {
      std::printf("revoked %s (tenant '%s')\n", out.id().c_str(),
                  out.tenant().c_str());
    }
    return 0;
  }
  std::fprintf(stderr,
               "mergectl token: expected create, list [TENANT] or revoke ID\n");
  return 2;
}

}  // namespace mergectl
