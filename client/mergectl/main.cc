// mergectl: the command-line client of the mergeserve gRPC API.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "mergeserve/v1/registry.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

using mergeserve::v1::Checkpoint;
using mergeserve::v1::RegistryService;

constexpr char kUsage[] =
    R"(usage: mergectl [--server HOST:PORT] [--json] VERB [args]

verbs:
  register NAME PATH [--role base|expert|auxiliary] [--base NAME] [--label K=V]...
                       register a server-side checkpoint folder (default role: expert)
  list [--role ROLE] [--label K=V]...
                       list registered checkpoints
  show NAME            one checkpoint with its tensors
  delete NAME          forget a checkpoint

--server defaults to $MERGESERVE_ADDR, else localhost:50051. --json prints
machine-readable output. Exit codes: 0 ok, 2 invalid argument, 3 not found,
4 data loss, 5 already exists, 6 permission denied, 7 failed precondition,
8 unavailable, 1 other.
)";

int ExitCode(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
      return 0;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 2;
    case grpc::StatusCode::NOT_FOUND:
      return 3;
    case grpc::StatusCode::DATA_LOSS:
      return 4;
    case grpc::StatusCode::ALREADY_EXISTS:
      return 5;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 6;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return 7;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 8;
    default:
      return 1;
  }
}

const char* RoleName(mergeserve::v1::CheckpointRole r) {
  switch (r) {
    case mergeserve::v1::CHECKPOINT_ROLE_BASE:
      return "base";
    case mergeserve::v1::CHECKPOINT_ROLE_EXPERT:
      return "expert";
    case mergeserve::v1::CHECKPOINT_ROLE_AUXILIARY:
      return "auxiliary";
    default:
      return "?";
  }
}

bool ParseRole(const std::string& s, mergeserve::v1::CheckpointRole* out) {
  if (s == "base")
    *out = mergeserve::v1::CHECKPOINT_ROLE_BASE;
  else if (s == "expert")
    *out = mergeserve::v1::CHECKPOINT_ROLE_EXPERT;
  else if (s == "auxiliary")
    *out = mergeserve::v1::CHECKPOINT_ROLE_AUXILIARY;
  else
    return false;
  return true;
}

std::string HumanBytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

nlohmann::json ToJson(const Checkpoint& c) {
  nlohmann::json j = {{"name", c.name()},
                      {"role", RoleName(c.role())},
                      {"base", c.base()},
                      {"path", c.path()},
                      {"labels", std::map<std::string, std::string>(
                                     c.labels().begin(), c.labels().end())},
                      {"content_digest", c.content_digest()},
                      {"size_bytes", c.size_bytes()},
                      {"tensor_count", c.tensor_count()},
                      {"parameter_count", c.parameter_count()},
                      {"create_time", c.create_time().seconds()}};
  if (c.tensors_size() > 0) {
    nlohmann::json t = nlohmann::json::array();
    for (const auto& m : c.tensors()) {
      t.push_back(
          {{"name", m.name()},
           {"dtype", mergeserve::v1::TensorDType_Name(m.dtype()).substr(13)},
           {"shape",
            std::vector<int64_t>(m.shape().begin(), m.shape().end())}});
    }
    j["tensors"] = t;
  }
  return j;
}

void PrintCheckpoint(const Checkpoint& c) {
  std::printf("name:        %s\nrole:        %s\n", c.name().c_str(),
              RoleName(c.role()));
  if (!c.base().empty()) std::printf("base:        %s\n", c.base().c_str());
  std::printf("path:        %s\ndigest:      %s\nsize:        %s\n",
              c.path().c_str(), c.content_digest().c_str(),
              HumanBytes(c.size_bytes()).c_str());
  std::printf("tensors:     %lld (%lld parameters)\n",
              static_cast<long long>(c.tensor_count()),
              static_cast<long long>(c.parameter_count()));
  for (const auto& [k, v] : c.labels())
    std::printf("label:       %s=%s\n", k.c_str(), v.c_str());
  for (const auto& t : c.tensors()) {
    std::string shape;
    for (int i = 0; i < t.shape_size(); ++i) {
      shape += (i ? "x" : "") + std::to_string(t.shape(i));
    }
    std::printf("  %-60s %-5s %s\n", t.name().c_str(),
                mergeserve::v1::TensorDType_Name(t.dtype()).substr(13).c_str(),
                shape.c_str());
  }
}

int Fail(const grpc::Status& s, const std::string& server) {
  std::string msg = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    msg = "cannot reach mergeserve at " + server + " (" + msg + ")";
  }
  std::fprintf(stderr, "mergectl: %s\n", msg.c_str());
  return ExitCode(s);
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("MERGESERVE_ADDR");
  std::string server = env ? env : "localhost:50051";
  bool json = false;
  std::vector<std::string> pos;
  std::string role, base;
  std::map<std::string, std::string> labels;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const std::string& flag) -> std::string {
      if (a.size() > flag.size() && a[flag.size()] == '=')
        return a.substr(flag.size() + 1);
      if (i + 1 >= argc) {
        std::fprintf(stderr, "mergectl: %s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    auto is = [&](const std::string& flag) {
      return a == flag || a.rfind(flag + "=", 0) == 0;
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if (is("--server")) {
      server = value("--server");
    } else if (is("--role")) {
      role = value("--role");
    } else if (is("--base")) {
      base = value("--base");
    } else if (is("--label")) {
      const std::string kv = value("--label");
      const size_t eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::fprintf(stderr, "mergectl: --label takes KEY=VALUE, got '%s'\n",
                     kv.c_str());
        return 2;
      }
      labels[kv.substr(0, eq)] = kv.substr(eq + 1);
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "mergectl: unknown option %s\n\n%s", a.c_str(),
                   kUsage);
      return 2;
    } else {
      pos.push_back(a);
    }
  }
  if (pos.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  auto channel =
      grpc::CreateChannel(server, grpc::InsecureChannelCredentials());
  auto stub = RegistryService::NewStub(channel);
  const std::string verb = pos[0];
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));

  if (verb == "register") {
    if (pos.size() != 3) {
      std::fprintf(stderr, "mergectl register: expected NAME PATH\n");
      return 2;
    }
    mergeserve::v1::RegisterCheckpointRequest req;
    Checkpoint* c = req.mutable_checkpoint();
    c->set_name(pos[1]);
    c->set_path(pos[2]);
    mergeserve::v1::CheckpointRole r = mergeserve::v1::CHECKPOINT_ROLE_EXPERT;
    if (!role.empty() && !ParseRole(role, &r)) {
      std::fprintf(stderr,
                   "mergectl: --role must be base, expert or auxiliary\n");
      return 2;
    }
    c->set_role(r);
    c->set_base(base);
    for (const auto& [k, v] : labels) (*c->mutable_labels())[k] = v;
    Checkpoint out;
    grpc::Status s = stub->RegisterCheckpoint(&ctx, req, &out);
    if (!s.ok()) return Fail(s, server);
    if (json) {
      std::cout << ToJson(out).dump() << std::endl;
    } else {
      std::printf(
          "registered %s (%s, %lld tensors, %s, %s)\n", out.name().c_str(),
          RoleName(out.role()), static_cast<long long>(out.tensor_count()),
          HumanBytes(out.size_bytes()).c_str(), out.content_digest().c_str());
    }
    return 0;
  }
  if (verb == "list") {
    mergeserve::v1::ListCheckpointsRequest req;
    if (!role.empty()) {
      mergeserve::v1::CheckpointRole r;
      if (!ParseRole(role, &r)) {
        std::fprintf(stderr,
                     "mergectl: --role must be base, expert or auxiliary\n");
        return 2;
      }
      req.set_role(r);
    }
    for (const auto& [k, v] : labels) (*req.mutable_label_selector())[k] = v;
    mergeserve::v1::ListCheckpointsResponse out;
    grpc::Status s = stub->ListCheckpoints(&ctx, req, &out);
    if (!s.ok()) return Fail(s, server);
    if (json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& c : out.checkpoints()) j.push_back(ToJson(c));
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::printf("%-24s %-9s %-20s %10s %8s  %s\n", "NAME", "ROLE", "BASE",
                "SIZE", "TENSORS", "DIGEST");
    for (const auto& c : out.checkpoints()) {
      std::printf("%-24s %-9s %-20s %10s %8lld  %.19s\n", c.name().c_str(),
                  RoleName(c.role()), c.base().c_str(),
                  HumanBytes(c.size_bytes()).c_str(),
                  static_cast<long long>(c.tensor_count()),
                  c.content_digest().c_str());
    }
    return 0;
  }
  if (verb == "show" || verb == "delete") {
    if (pos.size() != 2) {
      std::fprintf(stderr, "mergectl %s: expected NAME\n", verb.c_str());
      return 2;
    }
    if (verb == "delete") {
      mergeserve::v1::DeleteCheckpointRequest req;
      req.set_name(pos[1]);
      google::protobuf::Empty out;
      grpc::Status s = stub->DeleteCheckpoint(&ctx, req, &out);
      if (!s.ok()) return Fail(s, server);
      if (json) {
        std::cout << nlohmann::json({{"deleted", pos[1]}}).dump() << std::endl;
      } else {
        std::printf("deleted %s\n", pos[1].c_str());
      }
      return 0;
    }
    mergeserve::v1::GetCheckpointRequest req;
    req.set_name(pos[1]);
    req.set_view(mergeserve::v1::CHECKPOINT_VIEW_FULL);
    Checkpoint out;
    grpc::Status s = stub->GetCheckpoint(&ctx, req, &out);
    if (!s.ok()) return Fail(s, server);
    if (json) {
      std::cout << ToJson(out).dump() << std::endl;
    } else {
      PrintCheckpoint(out);
    }
    return 0;
  }
  std::fprintf(stderr, "mergectl: unknown verb '%s'\n\n%s", verb.c_str(),
               kUsage);
  return 2;
}
