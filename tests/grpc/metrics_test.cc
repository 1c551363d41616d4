// Scrapes the Prometheus endpoint over HTTP and checks the counters move.
#include <grpcpp/grpcpp.h>

#include <regex>
#include <thread>

#include "gmock/gmock.h"
#include "grpc/merge_server.h"
#include "gtest/gtest.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "mergeserve/v1/registry.grpc.pb.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

std::string HttpGet(int port, const std::string& path) {
  return testing::HttpExchange(
      port, "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n");
}

// The value of the first sample line starting with `prefix`.
double Sample(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0)
      return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

TEST(MetricsTest, CountersMoveWithTraffic) {
  const std::string root = testing::TempDir("metrics");
  testing::WriteModel(root + "/models/base",
                      {{"w", {{64}, std::vector<float>(64, 1.f)}}});
  testing::WriteModel(root + "/models/e0",
                      {{"w", {{64}, std::vector<float>(64, 2.f)}}});
  MergeServer::Options o;
  o.listen = "127.0.0.1:0";
  o.metrics_listen = "127.0.0.1:0";
  o.data_dir = root + "/data";
  o.allowed_roots = {root + "/models"};
  auto server = MergeServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->metrics_port(), 0);
  auto ch =
      grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()),
                          grpc::InsecureChannelCredentials());
  auto registry = v1::RegistryService::NewStub(ch);
  auto merges = v1::MergeService::NewStub(ch);
  for (const char* n : {"base", "e0"}) {
    v1::RegisterCheckpointRequest req;
    req.mutable_checkpoint()->set_name(n);
    req.mutable_checkpoint()->set_path(root + "/models/" + n);
    req.mutable_checkpoint()->set_role(std::string(n) == "base"
                                           ? v1::CHECKPOINT_ROLE_BASE
                                           : v1::CHECKPOINT_ROLE_EXPERT);
    v1::Checkpoint out;
    grpc::ClientContext ctx;
    ASSERT_TRUE(registry->RegisterCheckpoint(&ctx, req, &out).ok());
  }
  v1::GetCheckpointRequest missing;
  missing.set_name("ghost");
  v1::Checkpoint out;
  grpc::ClientContext gctx;
  EXPECT_FALSE(registry->GetCheckpoint(&gctx, missing, &out).ok());

  v1::CreateMergeJobRequest create;
  create.mutable_spec()->set_config_yaml(
      "merge_method: task_arithmetic\nbase_model: base\nmodels: [e0]\n");
  v1::MergeJob job;
  grpc::ClientContext cctx;
  ASSERT_TRUE(merges->CreateMergeJob(&cctx, create, &job).ok());
  {
    grpc::ClientContext wctx;
    v1::WatchMergeJobRequest w;
    w.set_id(job.id());
    auto reader = merges->WatchMergeJob(&wctx, w);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  {
    grpc::ClientContext dctx;
    v1::DownloadMergeResultRequest d;
    d.set_id(job.id());
    auto reader = merges->DownloadMergeResult(&dctx, d);
    v1::DownloadChunk chunk;
    while (reader->Read(&chunk)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // gauge poll
  const std::string text = HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_THAT(text, HasSubstr("200 OK"));
  EXPECT_EQ(Sample(text,
                   "mergeserve_rpc_requests_total{code=\"OK\",method=\""
                   "/mergeserve.v1.RegistryService/RegisterCheckpoint\"}"),
            2);
  EXPECT_EQ(Sample(text,
                   "mergeserve_rpc_requests_total{code=\"NOT_FOUND\",method=\""
                   "/mergeserve.v1.RegistryService/GetCheckpoint\"}"),
            1);
  EXPECT_EQ(Sample(text,
                   "mergeserve_rpc_requests_total{code=\"OK\",method=\""
                   "/mergeserve.v1.MergeService/CreateMergeJob\"}"),
            1);
  EXPECT_EQ(
      Sample(text,
             "mergeserve_job_duration_seconds_count{state=\"succeeded\"}"),
      1);
  EXPECT_GT(Sample(text, "mergeserve_bytes_streamed_total"), 0);
  EXPECT_GT(Sample(text, "mergeserve_merged_input_bytes_total"), 0);
  EXPECT_EQ(Sample(text, "mergeserve_queue_depth"), 0);
  // One replica took the one job from the queue and lost nothing.
  EXPECT_EQ(Sample(text, "mergeserve_replica_jobs_total{event=\"claimed\"}"),
            1);
  EXPECT_EQ(Sample(text, "mergeserve_replica_jobs_total{event=\"lease_lost\"}"),
            0);
}

}  // namespace
}  // namespace mergeserve
