// mergectl verbs for the checkpoint registry: register, list, show, delete.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/ui/progress_bar.h"
#include "mergeserve/v1/registry.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mergectl {
namespace {

using mergeserve::v1::Checkpoint;
using mergeserve::v1::RegistryService;

// Enum values as the CLI spells them: CHECKPOINT_ROLE_BASE <-> "base".
std::string Word(const std::string& enum_name, const std::string& prefix) {
  if (enum_name.rfind(prefix, 0) != 0) return "?";
  std::string w = enum_name.substr(prefix.size());
  for (char& ch : w) ch = static_cast<char>(std::tolower(ch));
  return w;
}

std::string Upper(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::toupper(ch));
  return s;
}

std::string RoleName(mergeserve::v1::CheckpointRole r) {
  return Word(mergeserve::v1::CheckpointRole_Name(r), "CHECKPOINT_ROLE_");
}

bool ParseRole(const std::string& s, mergeserve::v1::CheckpointRole* out) {
  return s != "unspecified" && mergeserve::v1::CheckpointRole_Parse(
                                   "CHECKPOINT_ROLE_" + Upper(s), out);
}

nlohmann::json ToJson(const Checkpoint& c) {
  nlohmann::json j = {{"name", c.name()},
                      {"tenant", c.tenant()},
                      {"uploaded", c.uploaded()},
                      {"published", c.published()},
                      {"role", RoleName(c.role())},
                      {"base", c.base()},
                      {"path", c.path()},
                      {"labels", std::map<std::string, std::string>(
                                     c.labels().begin(), c.labels().end())},
                      {"content_digest", c.content_digest()},
                      {"size_bytes", c.size_bytes()},
                      {"tensor_count", c.tensor_count()},
                      {"parameter_count", c.parameter_count()},
                      {"create_time", c.create_time().seconds()},
                      {"program", c.program()},
                      {"task", c.task()}};
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
              RoleName(c.role()).c_str());
  if (!c.base().empty()) std::printf("base:        %s\n", c.base().c_str());
  if (!c.task().empty()) std::printf("task:        %s\n", c.task().c_str());
  if (!c.program().empty()) {
    std::printf("program:     %s\n", c.program().c_str());
  }
  std::printf("tenant:      %s%s\n", c.tenant().c_str(),
              c.published() ? " (published to every tenant)" : "");
  std::printf("path:        %s\ndigest:      %s\nsize:        %s\n",
              c.uploaded() ? "(uploaded)" : c.path().c_str(),
              c.content_digest().c_str(), HumanBytes(c.size_bytes()).c_str());
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

// Streams local files: a header with every file's size and SHA-256, then
// 1 MiB chunks. `open` starts the call (UploadCheckpoint or UploadDataset).
template <typename Response, typename Open>
grpc::Status UploadFiles(
    mergeserve::v1::UploadCheckpointRequest header,
    const std::vector<std::pair<std::string, std::string>>& files,
    const std::string& label, Open open, Response* out) {
  namespace fs = std::filesystem;
  int64_t total = 0;
  for (const auto& [name, path] : files) {
    auto digest = mergeserve::Sha256File(path);
    if (!digest.ok()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          std::string(digest.status().message()));
    }
    auto* f = header.mutable_header()->add_files();
    f->set_name(name);
    f->set_size_bytes(static_cast<int64_t>(fs::file_size(path)));
    f->set_sha256(*digest);
    total += f->size_bytes();
  }
  grpc::ClientContext ctx;
  auto writer = open(&ctx, out);
  bool ok = writer->Write(header);
  mergeserve::ProgressBar bar(stderr, "uploading " + label);
  int64_t sent = 0;
  std::vector<char> buf(1 << 20);
  for (size_t i = 0; ok && i < files.size(); ++i) {
    std::ifstream in(files[i].second, std::ios::binary);
    int64_t offset = 0;
    while (ok && in) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize n = in.gcount();
      if (n <= 0) break;
      mergeserve::v1::UploadCheckpointRequest chunk;
      chunk.mutable_chunk()->set_file(files[i].first);
      chunk.mutable_chunk()->set_offset(offset);
      chunk.mutable_chunk()->set_data(buf.data(), static_cast<size_t>(n));
      ok = writer->Write(chunk);
      offset += n;
      sent += n;
      bar.Update(sent, total, files[i].first);
    }
  }
  bar.Finish();
  writer->WritesDone();
  return writer->Finish();
}

// A local folder's model files (and its program, as program.pt).
grpc::Status Upload(RegistryService::Stub& stub, Checkpoint meta,
                    const std::string& dir, Checkpoint* out) {
  namespace fs = std::filesystem;
  std::vector<std::pair<std::string, std::string>> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (!e.is_regular_file()) continue;
    if (mergeserve::IsModelFile(n) ||
        (n == "program.pt" && meta.program().empty())) {
      files.push_back({n, dir + "/" + n});
    }
  }
  if (ec || files.empty()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "no model files in local folder " + dir);
  }
  if (!meta.program().empty()) {
    files.push_back({"program.pt", meta.program()});
    meta.clear_program();  // the server attaches its copy
  }
  std::sort(files.begin(), files.end());
  mergeserve::v1::UploadCheckpointRequest header;
  *header.mutable_header()->mutable_checkpoint() = meta;
  return UploadFiles(
      header, files, meta.name(),
      [&](grpc::ClientContext* ctx, Checkpoint* o) {
        return stub.UploadCheckpoint(ctx, o);
      },
      out);
}

std::string DatasetRoleName(mergeserve::v1::DatasetRole r) {
  return Word(mergeserve::v1::DatasetRole_Name(r), "DATASET_ROLE_");
}

bool ParseDatasetRole(const std::string& s, mergeserve::v1::DatasetRole* out) {
  return s != "unspecified" &&
         mergeserve::v1::DatasetRole_Parse("DATASET_ROLE_" + Upper(s), out);
}

nlohmann::json ToJson(const mergeserve::v1::Dataset& d) {
  return {{"name", d.name()},
          {"tenant", d.tenant()},
          {"uploaded", d.uploaded()},
          {"task", d.task()},
          {"role", DatasetRoleName(d.role())},
          {"path", d.path()},
          {"content_digest", d.content_digest()},
          {"examples", d.examples()},
          {"has_labels", d.has_labels()},
          {"size_bytes", d.size_bytes()}};
}

int DatasetVerb(const Args& args, RegistryService::Stub& stub,
                grpc::ClientContext& ctx) {
  const std::string& verb = args.positional[0];
  if (verb == "dataset") {
    if (args.positional.size() != 3 || args.task.empty() || args.role.empty()) {
      std::fprintf(stderr,
                   "mergectl dataset: expected NAME FILE --task TASK --role "
                   "eval|validation|fisher|auxiliary\n");
      return 2;
    }
    mergeserve::v1::Dataset d;
    d.set_name(args.positional[1]);
    d.set_task(args.task);
    mergeserve::v1::DatasetRole role;
    if (!ParseDatasetRole(args.role, &role)) {
      std::fprintf(stderr,
                   "mergectl: --role must be eval, validation, "
                   "fisher or auxiliary\n");
      return 2;
    }
    d.set_role(role);
    mergeserve::v1::Dataset out;
    grpc::Status s;
    if (args.upload) {
      const std::string& file = args.positional[2];
      mergeserve::v1::UploadCheckpointRequest header;
      *header.mutable_header()->mutable_dataset() = d;
      const std::string base = std::filesystem::path(file).filename().string();
      s = UploadFiles(
          header, {{base, file}}, d.name(),
          [&](grpc::ClientContext* c, mergeserve::v1::Dataset* o) {
            return stub.UploadDataset(c, o);
          },
          &out);
    } else {
      d.set_path(args.positional[2]);
      mergeserve::v1::RegisterDatasetRequest req;
      *req.mutable_dataset() = d;
      s = stub.RegisterDataset(&ctx, req, &out);
    }
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << ToJson(out).dump() << std::endl;
    } else {
      std::printf("registered dataset %s (task %s, %s, %lld examples%s)\n",
                  out.name().c_str(), out.task().c_str(),
                  DatasetRoleName(out.role()).c_str(),
                  static_cast<long long>(out.examples()),
                  out.has_labels() ? ", labeled" : "");
    }
    return 0;
  }
  if (verb == "datasets") {
    mergeserve::v1::ListDatasetsRequest req;
    req.set_task(args.task);
    if (!args.role.empty()) {
      mergeserve::v1::DatasetRole role;
      if (!ParseDatasetRole(args.role, &role)) {
        std::fprintf(stderr,
                     "mergectl: --role must be eval, validation, "
                     "fisher or auxiliary\n");
        return 2;
      }
      req.set_role(role);
    }
    mergeserve::v1::ListDatasetsResponse out;
    req.set_page_size(1000);
    do {
      mergeserve::v1::ListDatasetsResponse page;
      grpc::ClientContext pctx;
      grpc::Status s = stub.ListDatasets(&pctx, req, &page);
      if (!s.ok()) return Fail(s, args.server);
      for (auto& d : *page.mutable_datasets())
        *out.add_datasets() = std::move(d);
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    if (args.json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& d : out.datasets()) j.push_back(ToJson(d));
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::printf("%-24s %-12s %-10s %8s %7s %10s\n", "NAME", "TASK", "ROLE",
                "EXAMPLES", "LABELS", "SIZE");
    for (const auto& d : out.datasets()) {
      std::printf("%-24s %-12s %-10s %8lld %7s %10s\n", d.name().c_str(),
                  d.task().c_str(), DatasetRoleName(d.role()).c_str(),
                  static_cast<long long>(d.examples()),
                  d.has_labels() ? "yes" : "no",
                  HumanBytes(d.size_bytes()).c_str());
    }
    return 0;
  }
  if (verb == "delete-dataset") {
    if (args.positional.size() != 2) {
      std::fprintf(stderr, "mergectl delete-dataset: expected NAME\n");
      return 2;
    }
    mergeserve::v1::DeleteDatasetRequest req;
    req.set_name(args.positional[1]);
    google::protobuf::Empty out;
    grpc::Status s = stub.DeleteDataset(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << nlohmann::json({{"deleted", args.positional[1]}}).dump()
                << std::endl;
    } else {
      std::printf("deleted dataset %s\n", args.positional[1].c_str());
    }
    return 0;
  }
  return -1;
}

}  // namespace

int RunRegistryVerb(const Args& args,
                    const std::shared_ptr<grpc::Channel>& ch) {
  auto stub = RegistryService::NewStub(ch);
  const std::string& verb = args.positional[0];
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  if (verb == "register") {
    if (args.positional.size() != 3) {
      std::fprintf(stderr, "mergectl register: expected NAME PATH\n");
      return 2;
    }
    mergeserve::v1::RegisterCheckpointRequest req;
    Checkpoint* c = req.mutable_checkpoint();
    c->set_name(args.positional[1]);
    c->set_path(args.positional[2]);
    mergeserve::v1::CheckpointRole r = mergeserve::v1::CHECKPOINT_ROLE_EXPERT;
    if (!args.role.empty() && !ParseRole(args.role, &r)) {
      std::fprintf(stderr,
                   "mergectl: --role must be base, expert or auxiliary\n");
      return 2;
    }
    c->set_role(r);
    c->set_base(args.base);
    c->set_program(args.program);
    c->set_task(args.task);
    for (const auto& [k, v] : args.labels) (*c->mutable_labels())[k] = v;
    Checkpoint out;
    grpc::Status s =
        args.upload ? Upload(*stub, req.checkpoint(), args.positional[2], &out)
                    : stub->RegisterCheckpoint(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << ToJson(out).dump() << std::endl;
    } else {
      std::printf("registered %s (%s, %lld tensors, %s, %s)%s%s\n",
                  out.name().c_str(), RoleName(out.role()).c_str(),
                  static_cast<long long>(out.tensor_count()),
                  HumanBytes(out.size_bytes()).c_str(),
                  out.content_digest().c_str(),
                  out.task().empty() ? "" : ", task ", out.task().c_str());
    }
    return 0;
  }
  if (verb == "list") {
    mergeserve::v1::ListCheckpointsRequest req;
    if (!args.role.empty()) {
      mergeserve::v1::CheckpointRole r;
      if (!ParseRole(args.role, &r)) {
        std::fprintf(stderr,
                     "mergectl: --role must be base, expert or auxiliary\n");
        return 2;
      }
      req.set_role(r);
    }
    for (const auto& [k, v] : args.labels)
      (*req.mutable_label_selector())[k] = v;
    mergeserve::v1::ListCheckpointsResponse out;
    req.set_page_size(1000);
    do {
      mergeserve::v1::ListCheckpointsResponse page;
      grpc::ClientContext pctx;
      grpc::Status s = stub->ListCheckpoints(&pctx, req, &page);
      if (!s.ok()) return Fail(s, args.server);
      for (auto& c : *page.mutable_checkpoints()) {
        *out.add_checkpoints() = std::move(c);
      }
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    if (args.json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& c : out.checkpoints()) j.push_back(ToJson(c));
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::printf("%-24s %-9s %-20s %10s %8s  %s\n", "NAME", "ROLE", "BASE",
                "SIZE", "TENSORS", "DIGEST");
    for (const auto& c : out.checkpoints()) {
      std::printf("%-24s %-9s %-20s %10s %8lld  %.19s\n", c.name().c_str(),
                  RoleName(c.role()).c_str(), c.base().c_str(),
                  HumanBytes(c.size_bytes()).c_str(),
                  static_cast<long long>(c.tensor_count()),
                  c.content_digest().c_str());
    }
    return 0;
  }
  if (verb == "show" || verb == "delete") {
    if (args.positional.size() != 2) {
      std::fprintf(stderr, "mergectl %s: expected NAME\n", verb.c_str());
      return 2;
    }
    if (verb == "delete") {
      mergeserve::v1::DeleteCheckpointRequest req;
      req.set_name(args.positional[1]);
      google::protobuf::Empty out;
      grpc::Status s = stub->DeleteCheckpoint(&ctx, req, &out);
      if (!s.ok()) return Fail(s, args.server);
      if (args.json) {
        std::cout << nlohmann::json({{"deleted", args.positional[1]}}).dump()
                  << std::endl;
      } else {
        std::printf("deleted %s\n", args.positional[1].c_str());
      }
      return 0;
    }
    mergeserve::v1::GetCheckpointRequest req;
    req.set_name(args.positional[1]);
    req.set_view(mergeserve::v1::CHECKPOINT_VIEW_FULL);
    Checkpoint out;
    grpc::Status s = stub->GetCheckpoint(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << ToJson(out).dump() << std::endl;
    } else {
      PrintCheckpoint(out);
    }
    return 0;
  }
  return DatasetVerb(args, *stub, ctx);  // -1: not a registry verb
}

}  // namespace mergectl
