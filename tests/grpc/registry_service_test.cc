// RegistryService over a real loopback gRPC connection: every RPC, every
// error path with its status code, health, persistence across restarts.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <future>

#include "gmock/gmock.h"
#include "grpc/merge_server.h"
#include "gtest/gtest.h"
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

TEST_F(RegistryServiceTest, SurvivesARestart) {
  ASSERT_TRUE(
      Register("base", models_ + "/base", v1::CHECKPOINT_ROLE_BASE).ok());
  server_->Shutdown(std::chrono::milliseconds(100));
  server_.reset();
  StartServer();
  EXPECT_THAT(Names(), ::testing::ElementsAre("base"));
}

TEST_F(RegistryServiceTest, HealthReportsServing) {
  // grpc.health.v1.Health/Check with an empty request; SERVING is field 1 = 1.
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  grpc::ByteBuffer request, response;
  std::promise<grpc::Status> done;
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                    &request, &response,
                    [&](grpc::Status s) { done.set_value(s); });
  ASSERT_TRUE(done.get_future().get().ok());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices)
    bytes += std::string(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

}  // namespace
}  // namespace mergeserve
