// RegistryService over a real loopback gRPC connection: every RPC, every
// error path with its status code, health, persistence across restarts.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "gmock/gmock.h"
#include "grpc/health_check.h"
#include "grpc/merge_server.h"
#include "gtest/gtest.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/v1/registry.grpc.pb.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TempDir;

class RegistryServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TempDir("registry");
    models_ = root_ + "/models";
    testing::WriteModel(
        models_ + "/base",
        {{"w", {{2, 2}, {1, 2, 3, 4}}}, {"ids", {{2}, {0, 1}, DType::kI64}}});
    testing::WriteModel(models_ + "/expert", {{"w", {{2, 2}, {1, 2, 3, 5}}}});
    testing::WriteModel(models_ + "/wrong_shape", {{"w", {{4}, {1, 2, 3, 5}}}});
    fs::create_directories(models_ + "/corrupt");
    testing::WriteFile(models_ + "/corrupt/model.safetensors",
                       "garbage!garbage!");
    StartServer();
  }

  void StartServer() {
    MergeServer::Options o;
    o.listen = "127.0.0.1:0";
    o.data_dir = root_ + "/data";
    o.allowed_roots = {models_};
    auto s = MergeServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                            grpc::InsecureChannelCredentials());
    stub_ = v1::RegistryService::NewStub(channel_);
  }

  grpc::Status Register(const std::string& name, const std::string& path,
                        v1::CheckpointRole role, const std::string& base = "",
                        v1::Checkpoint* out = nullptr) {
    v1::RegisterCheckpointRequest req;
    req.mutable_checkpoint()->set_name(name);
    req.mutable_checkpoint()->set_path(path);
    req.mutable_checkpoint()->set_role(role);
    req.mutable_checkpoint()->set_base(base);
    (*req.mutable_checkpoint()->mutable_labels())["task"] = name;
    v1::Checkpoint local;
    grpc::ClientContext ctx;
    return stub_->RegisterCheckpoint(&ctx, req, out ? out : &local);
  }

  std::vector<std::string> Names(
      v1::CheckpointRole role = v1::CHECKPOINT_ROLE_UNSPECIFIED) {
    v1::ListCheckpointsRequest req;
    req.set_role(role);
    v1::ListCheckpointsResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->ListCheckpoints(&ctx, req, &resp).ok());
    std::vector<std::string> names;
    for (const auto& c : resp.checkpoints()) names.push_back(c.name());
    return names;
  }

  std::string root_, models_;
  std::unique_ptr<MergeServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::RegistryService::Stub> stub_;
};

TEST_F(RegistryServiceTest, RegistersListsShowsAndDeletes) {
  v1::Checkpoint base;
  ASSERT_TRUE(
      Register("base", models_ + "/base", v1::CHECKPOINT_ROLE_BASE, "", &base)
          .ok());
  EXPECT_EQ(base.tensor_count(), 2);
  EXPECT_EQ(base.parameter_count(), 6);
  EXPECT_THAT(base.content_digest(), ::testing::StartsWith("sha256:"));
  EXPECT_EQ(base.path(), fs::canonical(models_ + "/base").string());
  ASSERT_TRUE(
      Register("math", models_ + "/expert", v1::CHECKPOINT_ROLE_EXPERT, "base")
          .ok());
  EXPECT_THAT(Names(), ::testing::ElementsAre("base", "math"));
  EXPECT_THAT(Names(v1::CHECKPOINT_ROLE_EXPERT),
              ::testing::ElementsAre("math"));

  v1::ListCheckpointsRequest by_label;
  (*by_label.mutable_label_selector())["task"] = "math";
  v1::ListCheckpointsResponse resp;
  grpc::ClientContext lctx;
  ASSERT_TRUE(stub_->ListCheckpoints(&lctx, by_label, &resp).ok());
  ASSERT_EQ(resp.checkpoints_size(), 1);
  EXPECT_EQ(resp.checkpoints(0).name(), "math");

  v1::GetCheckpointRequest get;
  get.set_name("base");
  get.set_view(v1::CHECKPOINT_VIEW_FULL);
  v1::Checkpoint full;
  grpc::ClientContext gctx;
  ASSERT_TRUE(stub_->GetCheckpoint(&gctx, get, &full).ok());
  ASSERT_EQ(full.tensors_size(), 2);
  EXPECT_EQ(full.tensors(1).name(), "w");
  EXPECT_EQ(full.tensors(1).dtype(), v1::TENSOR_DTYPE_F32);
  EXPECT_THAT(full.tensors(1).shape(), ::testing::ElementsAre(2, 2));

  v1::DeleteCheckpointRequest del;
  del.set_name("math");
  google::protobuf::Empty empty;
  grpc::ClientContext dctx;
  ASSERT_TRUE(stub_->DeleteCheckpoint(&dctx, del, &empty).ok());
  EXPECT_THAT(Names(), ::testing::ElementsAre("base"));
  EXPECT_TRUE(fs::exists(models_ + "/expert/model.safetensors"));  // files stay
}

TEST_F(RegistryServiceTest,
       BadRequestsGetTheRightCodeAndLeaveTheRegistryIntact) {
  ASSERT_TRUE(
      Register("base", models_ + "/base", v1::CHECKPOINT_ROLE_BASE).ok());
  ASSERT_TRUE(
      Register("math", models_ + "/expert", v1::CHECKPOINT_ROLE_EXPERT, "base")
          .ok());
  struct Case {
    grpc::Status status;
    grpc::StatusCode code;
    const char* message;
  };
  const std::vector<Case> cases = {
      {Register("etc", "/etc", v1::CHECKPOINT_ROLE_BASE),
       grpc::StatusCode::PERMISSION_DENIED, "outside the storage roots"},
      {Register("dots", models_ + "/../../../etc", v1::CHECKPOINT_ROLE_BASE),
       grpc::StatusCode::PERMISSION_DENIED, "outside the storage roots"},
      {Register("ghost", models_ + "/ghost", v1::CHECKPOINT_ROLE_BASE),
       grpc::StatusCode::NOT_FOUND, "not found"},
      {Register("bad", models_ + "/corrupt", v1::CHECKPOINT_ROLE_BASE),
       grpc::StatusCode::DATA_LOSS, "invalid safetensors file"},
      {Register("base", models_ + "/base", v1::CHECKPOINT_ROLE_BASE),
       grpc::StatusCode::ALREADY_EXISTS, "already exists"},
      {Register("code", models_ + "/expert", v1::CHECKPOINT_ROLE_EXPERT,
                "nobase"),
       grpc::StatusCode::NOT_FOUND, "checkpoint 'nobase' not found"},
      {Register("shape", models_ + "/wrong_shape", v1::CHECKPOINT_ROLE_EXPERT,
                "base"),
       grpc::StatusCode::INVALID_ARGUMENT, "different shape"},
      {Register("bad name!", models_ + "/base", v1::CHECKPOINT_ROLE_BASE),
       grpc::StatusCode::INVALID_ARGUMENT, "invalid checkpoint name"},
      {Register("norole", models_ + "/base", v1::CHECKPOINT_ROLE_UNSPECIFIED),
       grpc::StatusCode::INVALID_ARGUMENT, "role"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.error_code(), c.code)
        << c.message << ": " << c.status.error_message();
    EXPECT_THAT(c.status.error_message(), HasSubstr(c.message));
  }
  v1::DeleteCheckpointRequest del;
  del.set_name("base");
  google::protobuf::Empty empty;
  grpc::ClientContext dctx;
  grpc::Status s = stub_->DeleteCheckpoint(&dctx, del, &empty);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("base of math"));
  v1::GetCheckpointRequest get;
  get.set_name("nope");
  v1::Checkpoint out;
  grpc::ClientContext gctx;
  EXPECT_EQ(stub_->GetCheckpoint(&gctx, get, &out).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(Names(), ::testing::ElementsAre("base", "math"));
}

// Sends `files` (name -> bytes) with the given declared digests; `cut`
// drops the last N bytes of the last file; `cancel` cancels mid-stream.
grpc::Status Upload(v1::RegistryService::Stub& stub, const std::string& name,
                    const std::map<std::string, std::string>& files,
                    const std::map<std::string, std::string>& digests,
                    size_t cut = 0, bool cancel = false,
                    v1::Checkpoint* out = nullptr, size_t chunk_bytes = 1000) {
  v1::Checkpoint local;
  grpc::ClientContext ctx;
  auto writer = stub.UploadCheckpoint(&ctx, out ? out : &local);
  v1::UploadCheckpointRequest header;
  header.mutable_header()->mutable_checkpoint()->set_name(name);
  header.mutable_header()->mutable_checkpoint()->set_role(
      v1::CHECKPOINT_ROLE_BASE);
  for (const auto& [n, bytes] : files) {
    auto* f = header.mutable_header()->add_files();
    f->set_name(n);
    f->set_size_bytes(static_cast<int64_t>(bytes.size()));
    f->set_sha256(digests.at(n));
  }
  writer->Write(header);
  size_t i = 0;
  for (const auto& [n, bytes] : files) {
    const bool last = ++i == files.size();
    const std::string data = last ? bytes.substr(0, bytes.size() - cut) : bytes;
    for (size_t off = 0; off < data.size(); off += chunk_bytes) {
      v1::UploadCheckpointRequest chunk;
      chunk.mutable_chunk()->set_file(n);
      chunk.mutable_chunk()->set_offset(static_cast<int64_t>(off));
      chunk.mutable_chunk()->set_data(data.substr(off, chunk_bytes));
      writer->Write(chunk);
      if (cancel) {
        ctx.TryCancel();
        return writer->Finish();
      }
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

TEST_F(RegistryServiceTest, UploadsAreVerifiedAndAtomic) {
  const std::string bytes = Slurp(models_ + "/base/model.safetensors");
  const std::map<std::string, std::string> files = {
      {"model.safetensors", bytes}, {"config.json", "{}"}};
  const std::map<std::string, std::string> digests = {
      {"model.safetensors", Sha256Hex(bytes)},
      {"config.json", Sha256Hex("{}")}};
  const std::string uploads = root_ + "/data/uploads";
  auto nothing_left = [&] {
    if (!fs::exists(uploads)) return true;
    return fs::is_empty(uploads);
  };

  // Corrupt: a digest that does not match.
  auto wrong = digests;
  wrong["model.safetensors"] = std::string(64, '0');
  grpc::Status s = Upload(*stub_, "up", files, wrong);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  EXPECT_THAT(s.error_message(),
              HasSubstr("does not match its declared SHA-256"));
  // Short: the stream ends early.
  s = Upload(*stub_, "up", files, digests, /*cut=*/10);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(s.error_message(), HasSubstr("stopped at"));
  // Dropped: the client cancels mid-stream.
  s = Upload(*stub_, "up", files, digests, 0, /*cancel=*/true);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED);
  // Not a model file.
  s = Upload(*stub_, "up", {{"../evil.sh", "x"}},
             {{"../evil.sh", Sha256Hex("x")}});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Too large a message (one 9 MiB chunk; the server takes up to 8 MiB).
  s = Upload(*stub_, "up", {{"model.safetensors", std::string(9 << 20, 'x')}},
             {{"model.safetensors", Sha256Hex(std::string(9 << 20, 'x'))}}, 0,
             false, nullptr, /*chunk_bytes=*/9 << 20);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
  for (int i = 0; i < 100 && !nothing_left(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(nothing_left()) << "partial upload left behind";
  EXPECT_TRUE(Names().empty());

  v1::Checkpoint out;
  s = Upload(*stub_, "up", files, digests, 0, false, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(out.tensor_count(), 2);
  // The server does not say where it keeps uploads.
  EXPECT_TRUE(out.uploaded());
  EXPECT_EQ(out.path(), "");
  std::vector<fs::path> stored;
  for (const auto& e : fs::directory_iterator(root_ + "/data/checkpoints")) {
    stored.push_back(e.path());
  }
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_THAT(stored[0].filename().string(), ::testing::StartsWith("up-"));
  // The same bytes registered from a path have the same digest.
  v1::Checkpoint from_path;
  ASSERT_TRUE(Register("base", models_ + "/base", v1::CHECKPOINT_ROLE_BASE, "",
                       &from_path)
                  .ok());
  EXPECT_EQ(out.content_digest(), from_path.content_digest());
  EXPECT_THAT(Names(), ::testing::ElementsAre("base", "up"));
  // Deleting an uploaded checkpoint removes its files too.
  v1::DeleteCheckpointRequest del;
  del.set_name("up");
  google::protobuf::Empty empty;
  grpc::ClientContext dctx;
  ASSERT_TRUE(stub_->DeleteCheckpoint(&dctx, del, &empty).ok());
  EXPECT_FALSE(fs::exists(stored[0]));
  EXPECT_TRUE(fs::exists(models_ + "/base/model.safetensors"));
  // A Hub-style name is stored as one folder beside the others, never
  // inside another upload's folder.
  s = Upload(*stub_, "org/up@v1", files, digests, 0, false, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(out.name(), "org/up@v1");
  stored.clear();
  for (const auto& e : fs::directory_iterator(root_ + "/data/checkpoints")) {
    stored.push_back(e.path());
  }
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_THAT(stored[0].filename().string(),
              ::testing::StartsWith("org+up@v1-"));
  EXPECT_TRUE(fs::is_regular_file(stored[0] / "model.safetensors"));
}

TEST_F(RegistryServiceTest, SurvivesARestart) {
  ASSERT_TRUE(
      Register("base", models_ + "/base", v1::CHECKPOINT_ROLE_BASE).ok());
  server_->Shutdown(std::chrono::milliseconds(100));
  server_.reset();
  StartServer();
  EXPECT_THAT(Names(), ::testing::ElementsAre("base"));
}

TEST_F(RegistryServiceTest, HealthReportsServing) {
  EXPECT_EQ(testing::HealthStatus(channel_), 1);
}

}  // namespace
}  // namespace mergeserve
