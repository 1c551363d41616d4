// MergeService over loopback gRPC: jobs from submission to download, content
// addressing, the queue limit, cancellation, watch streams, resumable and
// bad downloads, and structured requests.
#include <grpcpp/grpcpp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

#include "gmock/gmock.h"
#include "grpc/health_check.h"
#include "grpc/merge_server.h"
#include "grpc/proto_convert.h"
#include "gtest/gtest.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "mergeserve/v1/registry.grpc.pb.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TempDir;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class MergeServiceTest : public ::testing::Test {
 protected:
  // `big` experts take long enough to cancel mid-merge.
  void SetUpModels(int64_t rows) {
    root_ = TempDir("merge_service");
    models_ = root_ + "/models";
    std::mt19937 rng(3);
    testing::TestModel base;
    for (int l = 0; l < 4; ++l) {
      base["model.layers." + std::to_string(l) + ".w"] = {
          {rows, 256},
          testing::RandomValues(static_cast<size_t>(rows * 256), rng),
          DType::kBF16};
    }
    testing::WriteModel(models_ + "/base", base);
    for (int e = 0; e < 2; ++e) {
      testing::TestModel m = base;
      for (auto& [name, t] : m) {
        auto d = testing::RandomValues(t.values.size(), rng, 0.01f);
        for (size_t j = 0; j < d.size(); ++j) t.values[j] += d[j];
      }
      testing::WriteModel(models_ + "/e" + std::to_string(e), m);
    }
  }

  void StartServer(int queue_limit = 16) {
    MergeServer::Options o;
    o.listen = "127.0.0.1:0";
    o.data_dir = root_ + "/data";
    o.allowed_roots = {models_};
    o.queue_limit = queue_limit;
    auto s = MergeServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    auto ch =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                            grpc::InsecureChannelCredentials());
    registry_ = v1::RegistryService::NewStub(ch);
    merges_ = v1::MergeService::NewStub(ch);
  }

  void RegisterAll() {
    for (const char* n : {"base", "e0", "e1"}) {
      v1::RegisterCheckpointRequest req;
      req.mutable_checkpoint()->set_name(n);
      req.mutable_checkpoint()->set_path(models_ + "/" + n);
      req.mutable_checkpoint()->set_role(std::string(n) == "base"
                                             ? v1::CHECKPOINT_ROLE_BASE
                                             : v1::CHECKPOINT_ROLE_EXPERT);
      if (std::string(n) != "base") req.mutable_checkpoint()->set_base("base");
      v1::Checkpoint out;
      grpc::ClientContext ctx;
      ASSERT_TRUE(registry_->RegisterCheckpoint(&ctx, req, &out).ok());
    }
  }

  grpc::Status Create(const std::string& yaml, v1::MergeJob* job) {
    v1::CreateMergeJobRequest req;
    req.mutable_spec()->set_config_yaml(yaml);
    grpc::ClientContext ctx;
    return merges_->CreateMergeJob(&ctx, req, job);
  }

  // Follows the job to its end, returning every event.
  std::vector<v1::MergeJob> Watch(const std::string& id) {
    grpc::ClientContext ctx;
    v1::WatchMergeJobRequest req;
    req.set_id(id);
    auto reader = merges_->WatchMergeJob(&ctx, req);
    std::vector<v1::MergeJob> events;
    v1::JobEvent ev;
    while (reader->Read(&ev)) events.push_back(ev.job());
    EXPECT_TRUE(reader->Finish().ok());
    return events;
  }

  // Downloads one file (from offset) or all files; returns bytes per file.
  grpc::Status Download(const std::string& id, const std::string& file,
                        int64_t offset,
                        std::map<std::string, std::string>* out) {
    grpc::ClientContext ctx;
    v1::DownloadMergeResultRequest req;
    req.set_id(id);
    req.set_file(file);
    req.set_offset(offset);
    req.set_chunk_bytes(4096);
    auto reader = merges_->DownloadMergeResult(&ctx, req);
    v1::DownloadChunk chunk;
    while (reader->Read(&chunk)) {
      std::string& data = (*out)[chunk.file()];
      EXPECT_EQ(chunk.offset(), offset + static_cast<int64_t>(data.size()));
      EXPECT_LE(chunk.data().size(), 4096u);
      data += chunk.data();
    }
    return reader->Finish();
  }

  static std::string Ties(double density) {
    return "merge_method: ties\nbase_model: base\nmodels:\n"
           "  - model: e0\n    parameters: {density: " +
           std::to_string(density) +
           "}\n  - model: e1\n    parameters: {density: 0.5}\n";
  }

  std::string root_, models_;
  std::unique_ptr<MergeServer> server_;
  std::unique_ptr<v1::RegistryService::Stub> registry_;
  std::unique_ptr<v1::MergeService::Stub> merges_;
};

TEST_F(MergeServiceTest, RunsAJobAndStreamsTheSameBytesAsAOneShotMerge) {
  SetUpModels(64);
  StartServer();
  RegisterAll();
  v1::MergeJob job;
  ASSERT_TRUE(Create(Ties(0.3), &job).ok());
  EXPECT_THAT(job.id(), ::testing::StartsWith("job-"));
  const auto events = Watch(job.id());
  ASSERT_FALSE(events.empty());
  const v1::MergeJob& last = events.back();
  ASSERT_EQ(last.state(), v1::JOB_STATE_SUCCEEDED) << last.error_message();
  EXPECT_EQ(last.tensors_done(), 4);
  EXPECT_GT(last.files_size(), 0);
  // The same merge in-process, straight from the folders (the names are
  // the folder names there).
  auto config = MergeConfig::FromYaml(Ties(0.3), models_);
  ASSERT_TRUE(config.ok());
  config->source_text = Ties(0.3);
  MergeOptions mo;
  mo.output_dir = root_ + "/local";
  ASSERT_TRUE(RunMerge(*config, mo).ok());
  std::map<std::string, std::string> files;
  ASSERT_TRUE(Download(job.id(), "", 0, &files).ok());
  ASSERT_EQ(files.size(), static_cast<size_t>(last.files_size()));
  EXPECT_EQ(files["model.safetensors"],
            ReadAll(root_ + "/local/model.safetensors"));
  // Resume from an offset returns the tail.
  std::map<std::string, std::string> tail;
  ASSERT_TRUE(Download(job.id(), "model.safetensors", 1000, &tail).ok());
  EXPECT_EQ(tail["model.safetensors"], files["model.safetensors"].substr(1000));
}

TEST_F(MergeServiceTest, IdenticalRequestsReturnTheStoredResult) {
  SetUpModels(16);
  StartServer();
  RegisterAll();
  v1::MergeJob a, b, c;
  ASSERT_TRUE(Create(Ties(0.3), &a).ok());
  Watch(a.id());
  ASSERT_TRUE(Create(Ties(0.3), &b).ok());
  EXPECT_EQ(b.id(), a.id());
  EXPECT_EQ(b.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_TRUE(Create(Ties(0.4), &c).ok());
  EXPECT_NE(c.id(), a.id());
  EXPECT_NE(c.request_digest(), a.request_digest());
}

TEST_F(MergeServiceTest, StructuredRequestsMatchYaml) {
  SetUpModels(16);
  StartServer();
  RegisterAll();
  v1::CreateMergeJobRequest req;
  auto* s = req.mutable_spec()->mutable_structured();
  s->set_method(v1::MERGE_METHOD_TASK_ARITHMETIC);
  s->set_base_model("base");
  s->add_models()->set_checkpoint("e0");
  auto* m1 = s->add_models();
  m1->set_checkpoint("e1");
  m1->set_weight(0.5);
  s->set_lambda(0.8);
  v1::MergeJob job;
  grpc::ClientContext ctx;
  ASSERT_TRUE(merges_->CreateMergeJob(&ctx, req, &job).ok());
  EXPECT_THAT(job.config_yaml(), HasSubstr("merge_method: task_arithmetic"));
  EXPECT_THAT(job.config_yaml(), HasSubstr("lambda: 0.8"));
  EXPECT_EQ(Watch(job.id()).back().state(), v1::JOB_STATE_SUCCEEDED);
  // A matrix method in the structured form, with its defaults.
  s->set_method(v1::MERGE_METHOD_TSV);
  grpc::ClientContext ctx_tsv;
  ASSERT_TRUE(merges_->CreateMergeJob(&ctx_tsv, req, &job).ok());
  EXPECT_THAT(job.config_yaml(), HasSubstr("merge_method: tsv"));
  EXPECT_EQ(Watch(job.id()).back().state(), v1::JOB_STATE_SUCCEEDED)
      << job.error_message();
  v1::CreateMergeJobRequest empty;
  grpc::ClientContext ctx2;
  EXPECT_EQ(merges_->CreateMergeJob(&ctx2, empty, &job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// The structured form's method names are the registry's: every enum value
// but UNSPECIFIED (and RI, the service's own step) names a method.
TEST(MergeMethodEnumTest, EveryValueNamesARegisteredMethod) {
  const auto* e = v1::MergeMethod_descriptor();
  for (int i = 0; i < e->value_count(); ++i) {
    const auto value = static_cast<v1::MergeMethod>(e->value(i)->number());
    if (value == v1::MERGE_METHOD_UNSPECIFIED || value == v1::MERGE_METHOD_RI)
      continue;
    EXPECT_NE(FindMethod(MethodName(value)), nullptr) << e->value(i)->name();
  }
}

TEST_F(MergeServiceTest, BadRequestsGetClearCodes) {
  SetUpModels(16);
  StartServer();
  RegisterAll();
  v1::MergeJob job;
  grpc::Status s =
      Create("merge_method: ties\nbase_model: base\nmodels: [ghost]\n", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(),
              HasSubstr("'ghost' is not a registered checkpoint"));
  s = Create("merge_method: [", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = Create("merge_method: soup\nmodels: [e0]\n", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = Create(Ties(1.5), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::GetMergeJobRequest get;
  get.set_id("job-nope");
  grpc::ClientContext gctx;
  EXPECT_EQ(merges_->GetMergeJob(&gctx, get, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);

  ASSERT_TRUE(Create(Ties(0.3), &job).ok());
  Watch(job.id());
  std::map<std::string, std::string> files;
  EXPECT_EQ(Download(job.id(), "nope.bin", 0, &files).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(
      Download(job.id(), "model.safetensors", 1 << 30, &files).error_code(),
      grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(Download("job-nope", "", 0, &files).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(MergeServiceTest,
       FullQueueIsResourceExhaustedAndQueuedJobsCancelAtOnce) {
  SetUpModels(16384);  // 4M-element tensors: a merge takes about a second
  StartServer(/*queue_limit=*/1);
  RegisterAll();
  v1::MergeJob running, queued, rejected;
  ASSERT_TRUE(Create(Ties(0.1), &running).ok());
  // Wait until the worker took it, so the next one waits in the queue.
  for (int i = 0; i < 200; ++i) {
    v1::GetMergeJobRequest get;
    get.set_id(running.id());
    grpc::ClientContext ctx;
    merges_->GetMergeJob(&ctx, get, &running);
    if (running.state() != v1::JOB_STATE_QUEUED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(Create(Ties(0.2), &queued).ok());
  EXPECT_EQ(queued.state(), v1::JOB_STATE_QUEUED);
  grpc::Status s = Create(Ties(0.25), &rejected);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("queue is full"));

  v1::CancelMergeJobRequest cancel;
  cancel.set_id(queued.id());
  v1::MergeJob after;
  grpc::ClientContext cctx;
  ASSERT_TRUE(merges_->CancelMergeJob(&cctx, cancel, &after).ok());
  EXPECT_EQ(after.state(), v1::JOB_STATE_CANCELLED);

  // Cancel the running one mid-merge: it ends CANCELLED with no result.
  cancel.set_id(running.id());
  grpc::ClientContext rctx;
  ASSERT_TRUE(merges_->CancelMergeJob(&rctx, cancel, &after).ok());
  const auto events = Watch(running.id());
  ASSERT_EQ(events.back().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(events.back().error_code(),
            static_cast<int>(grpc::StatusCode::CANCELLED));
  std::map<std::string, std::string> files;
  EXPECT_EQ(Download(running.id(), "", 0, &files).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  for (const auto& e : fs::directory_iterator(root_ + "/data/results")) {
    ADD_FAILURE() << "result folder left behind: " << e.path();
  }
}

TEST_F(MergeServiceTest,
       DrainingIsNotServingRefusesNewJobsAndFinishesRunningOnes) {
  SetUpModels(16384);  // about a second of merging
  StartServer();
  RegisterAll();
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                          grpc::InsecureChannelCredentials());
  EXPECT_EQ(testing::HealthStatus(channel), 1);
  v1::MergeJob job;
  ASSERT_TRUE(Create(Ties(0.1), &job).ok());
  for (int i = 0; i < 400 && job.state() != v1::JOB_STATE_RUNNING; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    v1::GetMergeJobRequest get;
    get.set_id(job.id());
    grpc::ClientContext ctx;
    merges_->GetMergeJob(&ctx, get, &job);
  }
  ASSERT_EQ(job.state(), v1::JOB_STATE_RUNNING);
  std::thread stopper([&] { server_->Shutdown(std::chrono::seconds(30)); });
  int health = 1;
  for (int i = 0; i < 200 && health == 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    health = testing::HealthStatus(channel);
  }
  EXPECT_EQ(health, 2);  // NOT_SERVING while the running merge drains
  v1::MergeJob refused;
  grpc::Status s = Create(Ties(0.2), &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  stopper.join();
  server_.reset();
  StartServer();
  v1::GetMergeJobRequest get;
  get.set_id(job.id());
  grpc::ClientContext ctx;
  ASSERT_TRUE(merges_->GetMergeJob(&ctx, get, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.error_message();
}

TEST_F(MergeServiceTest, AnalyzeReturnsDiagnosticsWithoutStoringAResult) {
  SetUpModels(64);
  StartServer();
  RegisterAll();
  v1::AnalyzeMergeRequest req;
  req.mutable_spec()->set_config_yaml(Ties(0.3));
  v1::AnalyzeMergeResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = merges_->AnalyzeMerge(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.method(), "ties");
  EXPECT_THAT(resp.experts(), ::testing::ElementsAre("e0", "e1"));
  EXPECT_EQ(resp.tensors_size(), 4);
  ASSERT_EQ(resp.overall().kept_fraction_size(), 2);
  EXPECT_NEAR(resp.overall().kept_fraction(0), 0.3, 0.01);
  EXPECT_NEAR(resp.overall().kept_fraction(1), 0.5, 0.01);
  EXPECT_GT(resp.overall().conflict_rate(), 0);
  EXPECT_EQ(resp.overall().cosine_size(), 4);
  EXPECT_DOUBLE_EQ(resp.overall().cosine(0), 1.0);
  // Four 64x256 matrices, one per layer: each has a subspace overlap in
  // (0, 1) between the two unrelated random task vectors.
  ASSERT_EQ(resp.layers_size(), 4);
  for (const auto& l : resp.layers()) {
    EXPECT_EQ(l.matrices(), 1);
    EXPECT_GT(l.subspace_overlap(), 0);
    EXPECT_LT(l.subspace_overlap(), 1);
  }
  EXPECT_EQ(resp.tensors(0).subspace_rank(), 32);
  EXPECT_EQ(resp.overall().subspace_overlap_size(), 4);
  v1::ListMergeJobsRequest list;
  v1::ListMergeJobsResponse jobs;
  grpc::ClientContext lctx;
  ASSERT_TRUE(merges_->ListMergeJobs(&lctx, list, &jobs).ok());
  // The analysis ran as a job of its own kind and stored no result folder.
  ASSERT_EQ(jobs.jobs_size(), 1);
  EXPECT_EQ(jobs.jobs(0).kind(), "analyze");
  EXPECT_EQ(jobs.jobs(0).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(jobs.jobs(0).files_size(), 0);
  EXPECT_FALSE(fs::exists(root_ + "/data/results") &&
               !fs::is_empty(root_ + "/data/results"));
  // The same analysis again is answered from the stored diagnostics.
  v1::AnalyzeMergeResponse again;
  grpc::ClientContext actx;
  ASSERT_TRUE(merges_->AnalyzeMerge(&actx, req, &again).ok());
  EXPECT_EQ(again.SerializeAsString(), resp.SerializeAsString());
  grpc::ClientContext l2ctx;
  ASSERT_TRUE(merges_->ListMergeJobs(&l2ctx, list, &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), 1);
  req.mutable_spec()->set_config_yaml(
      "merge_method: slerp\nbase_model: base\nmodels: [base, e0]\nparameters: "
      "{t: 0.5}\n");
  grpc::ClientContext bctx;
  EXPECT_EQ(merges_->AnalyzeMerge(&bctx, req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

// mergekit configs name checkpoints as the Hub does: registered as
// ORG/NAME@REV, a LoRA adapter, a pytorch_model.bin checkpoint and models
// of different vocabularies merge through the service to the golden
// cases' numbers, the config text unchanged but for the names.
TEST_F(MergeServiceTest, MergekitConfigsNameRegisteredCheckpointsTheHubsWay) {
  SetUpModels(8);
  StartServer();
  // multi_stage: a file of three merges, one job; its stages run in the
  // job's scratch, which is gone when it ends.
  for (const std::string c :
       {"lora", "pytorch_bin", "tokenizer_union", "multi_stage"}) {
    const fs::path golden = fs::path(MERGESERVE_GOLDEN_MERGEKIT_DIR) / c;
    fs::copy(golden, models_ + "/" + c, fs::copy_options::recursive);
    std::string yaml = ReadAll((golden / "config.yaml").string());
    for (const auto& e : fs::directory_iterator(golden)) {
      const std::string folder = e.path().filename();
      if (!e.is_directory() || folder == "expected") continue;
      const std::string name = "golden/" + c + "." + folder + "@r1";
      v1::RegisterCheckpointRequest req;
      req.mutable_checkpoint()->set_name(name);
      req.mutable_checkpoint()->set_path(models_ + "/" + c + "/" + folder);
      req.mutable_checkpoint()->set_role(v1::CHECKPOINT_ROLE_AUXILIARY);
      v1::Checkpoint out;
      grpc::ClientContext ctx;
      grpc::Status s = registry_->RegisterCheckpoint(&ctx, req, &out);
      ASSERT_TRUE(s.ok()) << name << ": " << s.error_message();
      EXPECT_EQ(out.name(), name);
      yaml = std::regex_replace(yaml, std::regex("\\b" + folder + "\\b"), name);
    }
    ASSERT_THAT(yaml, HasSubstr("golden/" + c + ".m1@r1")) << yaml;
    v1::MergeJob job;
    grpc::Status s = Create(yaml, &job);
    ASSERT_TRUE(s.ok()) << c << ": " << s.error_message() << "\n" << yaml;
    const auto events = Watch(job.id());
    ASSERT_FALSE(events.empty());
    ASSERT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED)
        << c << ": " << events.back().error_message();
    std::map<std::string, std::string> files;
    ASSERT_TRUE(Download(job.id(), "", 0, &files).ok());
    const std::string got = root_ + "/got-" + c;
    fs::create_directories(got);
    for (const auto& [name, bytes] : files) {
      std::ofstream(got + "/" + name, std::ios::binary) << bytes;
    }
    const auto have = testing::ReadModel(got);
    const auto want = testing::ReadModel((golden / "expected").string());
    ASSERT_EQ(have.size(), want.size()) << c;
    for (const auto& [name, w] : want) {
      ASSERT_EQ(have.at(name).size(), w.size()) << c << " " << name;
      for (size_t j = 0; j < w.size(); ++j) {
        ASSERT_NEAR(have.at(name)[j], w[j], 1e-5 * (1 + std::fabs(w[j])))
            << c << " " << name << "[" << j << "]";
      }
    }
    EXPECT_TRUE(files.count("README.md")) << c;
    if (c == "tokenizer_union") {
      EXPECT_THAT(files["tokenizer.json"], HasSubstr("<|im_start|>"));
      EXPECT_THAT(files["config.json"], HasSubstr("\"vocab_size\": 67"));
    }
    if (c == "multi_stage") {
      EXPECT_THAT(files["mergeserve_config.yaml"], HasSubstr("name: stage-a"));
      std::error_code ec;
      EXPECT_TRUE(fs::is_empty(root_ + "/data/scratch", ec) || ec)
          << "stage scratch left behind";
      // The same file again is the same job (one content address for all
      // three merges).
      v1::MergeJob again;
      ASSERT_TRUE(Create(yaml, &again).ok());
      EXPECT_EQ(again.id(), job.id());
      // An analysis takes one merge.
      v1::AnalyzeMergeRequest req;
      req.mutable_spec()->set_config_yaml(yaml);
      v1::AnalyzeMergeResponse resp;
      grpc::ClientContext actx;
      grpc::Status a = merges_->AnalyzeMerge(&actx, req, &resp);
      EXPECT_EQ(a.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(a.error_message(), HasSubstr("several"));
      // A wrong stage fails at submission, naming it, before any merge.
      const std::string wrong =
          std::regex_replace(yaml, std::regex("density: 0.6"), "density: 1.6");
      v1::MergeJob none;
      grpc::Status w = Create(wrong, &none);
      EXPECT_EQ(w.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_THAT(w.error_message(), HasSubstr("merge 'stage-b'"));
    }
  }
  // Names that are no Hub id are refused with the rule.
  v1::RegisterCheckpointRequest bad;
  bad.mutable_checkpoint()->set_name("a/b/c");
  bad.mutable_checkpoint()->set_path(models_ + "/base");
  bad.mutable_checkpoint()->set_role(v1::CHECKPOINT_ROLE_BASE);
  v1::Checkpoint out;
  grpc::ClientContext ctx;
  grpc::Status s = registry_->RegisterCheckpoint(&ctx, bad, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("ORG/NAME[@REVISION]"));
}

TEST_F(MergeServiceTest, JobsSurviveARestart) {
  SetUpModels(16);
  StartServer();
  RegisterAll();
  v1::MergeJob job;
  ASSERT_TRUE(Create(Ties(0.3), &job).ok());
  Watch(job.id());
  server_->Shutdown(std::chrono::seconds(5));
  server_.reset();
  StartServer();
  v1::ListMergeJobsRequest list;
  v1::ListMergeJobsResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(merges_->ListMergeJobs(&ctx, list, &resp).ok());
  ASSERT_EQ(resp.jobs_size(), 1);
  EXPECT_EQ(resp.jobs(0).state(), v1::JOB_STATE_SUCCEEDED);
  std::map<std::string, std::string> files;
  EXPECT_TRUE(Download(job.id(), "", 0, &files).ok());
  v1::MergeJob again;
  ASSERT_TRUE(Create(Ties(0.3), &again).ok());
  EXPECT_EQ(again.id(), job.id());
}

}  // namespace
}  // namespace mergeserve
