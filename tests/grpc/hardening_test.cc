// Regression tests for what a probe of the running server found (issue 8):
// each drives the real server over loopback gRPC, as an attacker or a
// careless client would, and checks the request is refused or contained
// with the right code while the server keeps serving.
#include <dirent.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "grpc/health_check.h"
#include "grpc/merge_server.h"
#include "grpc/status_util.h"
#include "gtest/gtest.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/system_memory.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "mergeserve/v1/registry.grpc.pb.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::TempDir;

int Count(const char* dir) {
  int n = 0;
  DIR* d = opendir(dir);
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// Holds the server's only worker until released, so what is queued behind
// it can be watched from its first event.
class WorkerGate {
 public:
  explicit WorkerGate(JobManager& jobs) {
    WorkItem item;
    item.kind = "test";
    item.run = [this](const std::atomic<bool>&) {
      std::unique_lock<std::mutex> lock(mu_);
      running_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_; });
    };
    EXPECT_TRUE(jobs.RunWork(item).ok());
    // Holds the worker only once it runs: a job queued before that could
    // take the worker first (seen under load).
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return running_; });
  }
  ~WorkerGate() { Release(); }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
  bool running_ = false;
};

class HardeningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TempDir("hardening");
    models_ = root_ + "/models";
    data_ = root_ + "/data";
    std::mt19937 rng(11);
    testing::TestModel base;
    for (int l = 0; l < 6; ++l) {
      base["model.layers." + std::to_string(l) + ".w"] = {
          {256, 256}, testing::RandomValues(256 * 256, rng), DType::kBF16};
    }
    testing::WriteModel(models_ + "/base", base);
    for (int e = 0; e < 3; ++e) {
      testing::TestModel m = base;
      for (auto& [name, t] : m) {
        auto d = testing::RandomValues(t.values.size(), rng, 0.01f);
        for (size_t j = 0; j < d.size(); ++j) t.values[j] += d[j];
      }
      testing::WriteModel(models_ + "/e" + std::to_string(e), m);
    }
    options_.listen = "127.0.0.1:0";
    options_.data_dir = data_;
    options_.allowed_roots = {models_};
  }

  void Start() {
    auto s = MergeServer::Start(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    channel_ =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                            grpc::InsecureChannelCredentials());
    registry_ = v1::RegistryService::NewStub(channel_);
    merges_ = v1::MergeService::NewStub(channel_);
  }

  grpc::Status Register(const std::string& name, const std::string& path,
                        const std::string& base = "base") {
    v1::RegisterCheckpointRequest req;
    req.mutable_checkpoint()->set_name(name);
    req.mutable_checkpoint()->set_path(path);
    req.mutable_checkpoint()->set_role(
        base.empty() ? v1::CHECKPOINT_ROLE_BASE : v1::CHECKPOINT_ROLE_EXPERT);
    req.mutable_checkpoint()->set_base(base);
    v1::Checkpoint out;
    grpc::ClientContext ctx;
    return registry_->RegisterCheckpoint(&ctx, req, &out);
  }
  void RegisterAll() {
    ASSERT_TRUE(Register("base", models_ + "/base", "").ok());
    for (const char* e : {"e0", "e1", "e2"}) {
      ASSERT_TRUE(Register(e, models_ + "/" + e).ok());
    }
  }
  grpc::Status Create(const std::string& yaml, v1::MergeJob* job) {
    v1::CreateMergeJobRequest req;
    req.mutable_spec()->set_config_yaml(yaml);
    grpc::ClientContext ctx;
    return merges_->CreateMergeJob(&ctx, req, job);
  }
  v1::MergeJob Wait(const std::string& id) {
    v1::MergeJob job;
    for (int i = 0; i < 3000; ++i) {
      v1::GetMergeJobRequest req;
      req.set_id(id);
      grpc::ClientContext ctx;
      EXPECT_TRUE(merges_->GetMergeJob(&ctx, req, &job).ok());
      const auto s = job.state();
      if (s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
          s == v1::JOB_STATE_CANCELLED) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return job;
  }
  // Uploads `dir`'s files as checkpoint `name` (an expert of base).
  grpc::Status Upload(const std::string& name, const std::string& dir) {
    v1::Checkpoint out;
    grpc::ClientContext ctx;
    auto w = registry_->UploadCheckpoint(&ctx, &out);
    v1::UploadCheckpointRequest header;
    header.mutable_header()->mutable_checkpoint()->set_name(name);
    header.mutable_header()->mutable_checkpoint()->set_role(
        v1::CHECKPOINT_ROLE_EXPERT);
    header.mutable_header()->mutable_checkpoint()->set_base("base");
    std::vector<std::pair<std::string, std::string>> files;
    for (const auto& e : fs::directory_iterator(dir)) {
      files.push_back({e.path().filename().string(),
                       testing::ReadFileBytes(e.path().string())});
    }
    for (const auto& [n, bytes] : files) {
      auto* f = header.mutable_header()->add_files();
      f->set_name(n);
      f->set_size_bytes(static_cast<int64_t>(bytes.size()));
      f->set_sha256(Sha256Hex(bytes));
    }
    w->Write(header);
    for (const auto& [n, bytes] : files) {
      v1::UploadCheckpointRequest chunk;
      chunk.mutable_chunk()->set_file(n);
      chunk.mutable_chunk()->set_data(bytes);
      w->Write(chunk);
    }
    w->WritesDone();
    return w->Finish();
  }
  std::string Ties(const std::vector<std::string>& experts,
                   const std::string& extra = "") {
    std::string y = "merge_method: ties\nbase_model: base\nmodels:\n";
    for (const auto& e : experts) {
      y += "  - model: " + e + "\n    parameters: {density: 0.5}\n";
    }
    return y + extra;
  }

  std::string root_, models_, data_;
  MergeServer::Options options_;
  std::unique_ptr<MergeServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::RegistryService::Stub> registry_;
  std::unique_ptr<v1::MergeService::Stub> merges_;
};

// Finding 2: one client deleted another's uploaded files through an alias.
TEST_F(HardeningTest, AnAliasOfAnUploadCanNeitherBeMadeNorDeleteIt) {
  Start();
  RegisterAll();
  ASSERT_TRUE(Upload("victim", models_ + "/e0").ok());
  v1::GetCheckpointRequest get;
  get.set_name("victim");
  v1::Checkpoint victim;
  grpc::ClientContext gctx;
  ASSERT_TRUE(registry_->GetCheckpoint(&gctx, get, &victim).ok());
  EXPECT_TRUE(victim.uploaded());
  EXPECT_EQ(victim.path(), "");  // the server path is not shown
  std::string stored;
  for (const auto& e : fs::directory_iterator(data_ + "/checkpoints")) {
    stored = e.path().string();
  }
  ASSERT_FALSE(stored.empty());
  // Registering the upload's folder (guessed), a link to it from an allowed
  // root, or a folder whose file links into it: all refused.
  grpc::Status s = Register("alias", stored);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("data dir"));
  // Messages name the data dir as <data>, never its real path.
  EXPECT_THAT(s.error_message(), Not(HasSubstr(fs::canonical(data_).string())));
  fs::create_directory_symlink(stored, models_ + "/link");
  EXPECT_EQ(Register("alias", models_ + "/link").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  fs::create_directories(models_ + "/filelink");
  fs::create_symlink(stored + "/model.safetensors",
                     models_ + "/filelink/model.safetensors");
  EXPECT_EQ(Register("alias", models_ + "/filelink").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Deleting a checkpoint registered from a path never touches its files.
  ASSERT_TRUE(Register("mine", models_ + "/e1").ok());
  v1::DeleteCheckpointRequest del;
  del.set_name("mine");
  google::protobuf::Empty empty;
  grpc::ClientContext dctx;
  ASSERT_TRUE(registry_->DeleteCheckpoint(&dctx, del, &empty).ok());
  EXPECT_TRUE(fs::exists(models_ + "/e1/model.safetensors"));
  // The victim is whole and merges.
  EXPECT_TRUE(fs::exists(stored + "/model.safetensors"));
  v1::MergeJob job;
  ASSERT_TRUE(Create(Ties({"victim", "e2"}), &job).ok());
  EXPECT_EQ(Wait(job.id()).state(), v1::JOB_STATE_SUCCEEDED);
}

// Finding 3: a symlinked shard escaped --allow-root.
TEST_F(HardeningTest, EveryFileMustLieUnderARootWhenRegisteredAndWhenOpened) {
  Start();
  RegisterAll();
  const std::string outside = TempDir("outside");
  fs::copy_file(models_ + "/e0/model.safetensors",
                outside + "/model.safetensors");
  fs::create_directories(models_ + "/escape");
  fs::create_symlink(outside + "/model.safetensors",
                     models_ + "/escape/model.safetensors");
  grpc::Status s = Register("escape", models_ + "/escape");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr(outside));
  // A folder that was fine when registered and is swapped for a link later
  // is refused when a merge opens it.
  fs::create_directories(models_ + "/swap");
  fs::copy_file(models_ + "/e0/model.safetensors",
                models_ + "/swap/model.safetensors");
  ASSERT_TRUE(Register("swap", models_ + "/swap").ok());
  fs::remove(models_ + "/swap/model.safetensors");
  fs::create_symlink(outside + "/model.safetensors",
                     models_ + "/swap/model.safetensors");
  v1::MergeJob job;
  s = Create(Ties({"swap", "e1"}), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Side files are checked too: a config.json linked out of the roots
  // does not end up in a result anyone can download.
  fs::create_directories(models_ + "/side");
  fs::copy_file(models_ + "/base/model.safetensors",
                models_ + "/side/model.safetensors");
  testing::WriteFile(outside + "/config.json", "{\"secret\": 1}");
  fs::create_symlink(outside + "/config.json", models_ + "/side/config.json");
  ASSERT_TRUE(Register("side", models_ + "/side", "").ok());
  ASSERT_TRUE(Create("merge_method: task_arithmetic\nbase_model: side\n"
                     "models: [e0]\n",
                     &job)
                  .ok());
  const v1::MergeJob done = Wait(job.id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done.error_code(),
            static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
}

// Finding 4: a checkpoint rewritten under a merge killed the process with
// SIGBUS.
TEST_F(HardeningTest, ACheckpointTruncatedDuringAMergeFailsOnlyThatJob) {
  options_.workers = 1;
  Start();
  RegisterAll();
  // Hold the only worker so the job can be watched from its first event.
  WorkerGate gate(server_->jobs());
  v1::MergeJob job;
  ASSERT_TRUE(Create(Ties({"e0", "e1"}), &job).ok());
  // After the first tensor, someone re-saves e1 in place: cut to its header.
  std::atomic<bool> cut{false};
  auto sub = server_->jobs().Subscribe(
      kDefaultTenant, job.id(), [&](const JobRecord& r) {
        if (r.tensors_done >= 1 && !cut.exchange(true)) {
          ASSERT_EQ(
              ::truncate((models_ + "/e1/model.safetensors").c_str(), 4096), 0);
        }
      });
  ASSERT_TRUE(sub.ok());
  gate.Release();
  const v1::MergeJob done = Wait(job.id());
  server_->jobs().Unsubscribe(*sub);
  EXPECT_TRUE(cut);
  EXPECT_EQ(done.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done.error_code(), static_cast<int>(grpc::StatusCode::DATA_LOSS));
  EXPECT_THAT(done.error_message(), HasSubstr("model 'e1'"));
  EXPECT_THAT(done.error_message(), HasSubstr("model.safetensors"));
  // No partial result, and the server goes on serving.
  EXPECT_FALSE(
      fs::exists(data_ + "/results/" + done.request_digest().substr(7)));
  EXPECT_EQ(testing::HealthStatus(channel_), 1);
  v1::MergeJob other;
  ASSERT_TRUE(Create(Ties({"e0", "e2"}), &other).ok());
  EXPECT_EQ(Wait(other.id()).state(), v1::JOB_STATE_SUCCEEDED);
}

// Finding 5: an 81 KB document stalled the server for half a minute.
TEST_F(HardeningTest, AnAliasBombIsRefusedWhileHealthChecksAnswer) {
  Start();
  RegisterAll();
  std::string y = "merge_method: ties\nbase_model: base\nmodels:\n";
  std::string list = "[";
  for (int i = 0; i < 10000; ++i) list += i ? ",0.5" : "0.5";
  y += "  - model: e0\n    parameters: {weight: &g " + list + "]}\n";
  for (int i = 1; i < 1000; ++i) {
    y += "  - model: e" + std::to_string(i % 3) +
         "\n    parameters: {weight: *g}\n";
  }
  EXPECT_LT(y.size(), 100000u);
  std::vector<std::thread> clients;
  std::atomic<int> refused{0};
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&] {
      v1::MergeJob job;
      grpc::Status s = Create(y, &job);
      if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
          s.error_message().find("at most") != std::string::npos) {
        ++refused;
      }
    });
  }
  EXPECT_EQ(testing::HealthStatus(channel_), 1);
  for (auto& t : clients) t.join();
  EXPECT_EQ(refused, 4);
}

// Finding 6: one 7.9 MB job record broke ListMergeJobs for everyone.
TEST_F(HardeningTest, HugeRequestsAreBoundedAndListsArePagedSummaries) {
  Start();
  RegisterAll();
  v1::MergeJob job;
  grpc::Status s =
      Create(Ties({"e0", "e1"}, "# " + std::string(7900000, 'x') + "\n"), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("bytes; at most"));
  // What held before keeps holding: 50 MB never gets past the transport.
  s = Create(Ties({"e0", "e1"}, "# " + std::string(50 << 20, 'x') + "\n"),
             &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(testing::HealthStatus(channel_), 1);
  // Under the bound, the comment is not stored: the canonical request is.
  ASSERT_TRUE(
      Create(Ties({"e0", "e1"}, "# " + std::string(900000, 'x') + "\n"), &job)
          .ok());
  EXPECT_LT(job.config_yaml().size(), 1000u);
  ASSERT_EQ(Wait(job.id()).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_LT(fs::file_size(data_ + "/results/" + job.request_digest().substr(7) +
                          "/mergeserve_config.yaml"),
            1000u);
  // Four more jobs; pages of two list all five once, as summaries.
  for (double lambda : {0.1, 0.2, 0.3, 0.4}) {
    v1::MergeJob j;
    ASSERT_TRUE(Create(Ties({"e0", "e1"}, "parameters: {lambda: " +
                                              std::to_string(lambda) + "}\n"),
                       &j)
                    .ok());
  }
  std::set<std::string> seen;
  int pages = 0;
  v1::ListMergeJobsRequest req;
  req.set_page_size(2);
  do {
    v1::ListMergeJobsResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(merges_->ListMergeJobs(&ctx, req, &resp).ok());
    for (const auto& j : resp.jobs()) {
      EXPECT_TRUE(seen.insert(j.id()).second);
      EXPECT_EQ(j.config_yaml(), "");
      EXPECT_EQ(j.method(), "ties");
    }
    req.set_page_token(resp.next_page_token());
    ++pages;
  } while (!req.page_token().empty());
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(pages, 3);
  req.set_page_token("not a token");
  v1::ListMergeJobsResponse bad;
  grpc::ClientContext bctx;
  EXPECT_EQ(merges_->ListMergeJobs(&bctx, req, &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // A finished job can be deleted with its result; a running one cannot.
  v1::DeleteMergeJobRequest del;
  del.set_id(job.id());
  google::protobuf::Empty empty;
  grpc::ClientContext dctx;
  ASSERT_TRUE(merges_->DeleteMergeJob(&dctx, del, &empty).ok());
  EXPECT_FALSE(
      fs::exists(data_ + "/results/" + job.request_digest().substr(7)));
  v1::GetMergeJobRequest get;
  get.set_id(job.id());
  grpc::ClientContext gctx;
  EXPECT_EQ(merges_->GetMergeJob(&gctx, get, &job).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

// Finding 7: the memory budget was not an upper bound.
TEST_F(HardeningTest, TheMemoryEstimateIsAnUpperBoundEvenForRepeatedExperts) {
  // The probe's request (3 experts repeated 1,000 times) is refused.
  options_.memory_budget = int64_t{1} << 30;
  Start();
  RegisterAll();
  std::vector<std::string> many;
  for (int i = 0; i < 1000; ++i) many.push_back("e" + std::to_string(i % 3));
  v1::MergeJob job;
  grpc::Status s = Create(Ties(many), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("at most 128"));
  // At the bound, the estimate is what a merge may hold, and it is checked
  // against the budget before the job is queued.
  many.resize(120);
  server_.reset();
  options_.memory_budget = 64 << 20;
  Start();
  s = Create(Ties(many), &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("memory budget"));
  // Measured: the same merge one-shot, against a one-model baseline.
  testing::WriteFile(models_ + "/many.yaml", [&] {
    std::string y = "merge_method: ties\nbase_model: base\nmodels:\n";
    for (const auto& e : many) {
      y += "  - model: " + e + "\n    parameters: {density: 0.5}\n";
    }
    return y;
  }());
  testing::WriteFile(models_ + "/one.yaml",
                     "merge_method: task_arithmetic\nbase_model: base\n"
                     "models: [e0]\n");
  auto run = [&](const std::string& config) {
    const std::string out = root_ + "/" + config + ".json";
    const std::string cmd = std::string(MERGESERVE_BINARY) + " merge " +
                            models_ + "/" + config + " " + root_ + "/out_" +
                            config + " --threads 2 --json > " + out;
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const std::string j = testing::ReadFileBytes(out);
    auto field = [&](const std::string& key) -> int64_t {
      const size_t at = j.find("\"" + key + "\":");
      return at == std::string::npos
                 ? -1
                 : std::stoll(j.substr(at + key.size() + 3));
    };
    return std::make_pair(field("peak_rss_bytes"),
                          field("memory_estimate_bytes"));
  };
  const auto [baseline_rss, unused] = run("one.yaml");
  const auto [rss, estimate] = run("many.yaml");
  ASSERT_GT(baseline_rss, 0);
  ASSERT_GT(estimate, 0);
  EXPECT_LE(rss - baseline_rss, estimate)
      << "peak RSS grew by " << (rss - baseline_rss) << " bytes, estimate "
      << estimate;
  // The server's default budget is real, not "unlimited".
  EXPECT_GT(UsableMemoryBytes(), 0);
}

// Finding 8: finite but overflowing parameters produced non-finite weights
// marked SUCCEEDED.
TEST_F(HardeningTest, OverflowIsRefusedUpFrontOrFailsTheJobNamingTheTensor) {
  Start();
  RegisterAll();
  v1::MergeJob job;
  for (const char* p : {"parameters: {lambda: 1.0e308}\n",
                        "parameters: {lambda: -1.0e308}\n"}) {
    grpc::Status s = Create(Ties({"e0", "e1"}, p), &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << p;
    EXPECT_THAT(s.error_message(), HasSubstr("lambda must be in")) << p;
  }
  grpc::Status s = Create(
      "merge_method: linear\nmodels:\n  - model: e0\n    parameters: {weight: "
      "1.0e308}\n",
      &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Within the bounds, but the float16 output overflows.
  ASSERT_TRUE(Create("merge_method: task_arithmetic\nbase_model: base\n"
                     "models:\n  - model: e0\n    parameters: {weight: 1.0e6}\n"
                     "parameters: {lambda: 1.0e6}\nout_dtype: float16\n",
                     &job)
                  .ok());
  const v1::MergeJob done = Wait(job.id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done.error_code(),
            static_cast<int>(grpc::StatusCode::OUT_OF_RANGE));
  EXPECT_THAT(done.error_message(), HasSubstr("merged tensor 'model.layers."));
  EXPECT_THAT(done.error_message(), HasSubstr("non-finite"));
}

// Finding 9: uploads pinned file descriptors and had no limits.
TEST_F(HardeningTest, UploadsAreBoundedAndIdleOnesEnd) {
  options_.uploads.idle_timeout = std::chrono::milliseconds(500);
  options_.default_quota.max_streams = 1;
  Start();
  auto header = [](int files) {
    v1::UploadCheckpointRequest h;
    h.mutable_header()->mutable_checkpoint()->set_name("up");
    h.mutable_header()->mutable_checkpoint()->set_role(
        v1::CHECKPOINT_ROLE_BASE);
    for (int i = 0; i < files; ++i) {
      auto* f = h.mutable_header()->add_files();
      f->set_name("model-" + std::to_string(i) + ".safetensors");
      f->set_size_bytes(1000);
      f->set_sha256(std::string(64, '0'));
    }
    return h;
  };
  {
    v1::Checkpoint out;
    grpc::ClientContext ctx;
    auto w = registry_->UploadCheckpoint(&ctx, &out);
    w->Write(header(7000));
    w->WritesDone();
    grpc::Status s = w->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("at most 1024 files"));
  }
  // An idle upload that declared a thousand files holds one descriptor at
  // most, blocks a second stream of its tenant, and ends at the timeout.
  const int fds_before = Count("/proc/self/fd");
  v1::Checkpoint out;
  grpc::ClientContext ctx;
  auto w = registry_->UploadCheckpoint(&ctx, &out);
  w->Write(header(1000));
  v1::UploadCheckpointRequest chunk;
  chunk.mutable_chunk()->set_file("model-0.safetensors");
  chunk.mutable_chunk()->set_data(std::string(10, 'x'));
  w->Write(chunk);
  for (int i = 0; i < 50 && Count((data_ + "/uploads").c_str()) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(Count("/proc/self/fd"), fds_before + 3);
  {
    v1::Checkpoint out2;
    grpc::ClientContext ctx2;
    auto w2 = registry_->UploadCheckpoint(&ctx2, &out2);
    w2->WritesDone();
    grpc::Status s = w2->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("max_streams"));
  }
  grpc::Status s = w->Finish();  // the server ends it
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(s.error_message(), HasSubstr("idle"));
  for (int i = 0; i < 100 && Count((data_ + "/uploads").c_str()) > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(Count((data_ + "/uploads").c_str()), 0);
}

// Finding 10: analyses (and evaluations, sweeps) ran on detached threads.
TEST_F(HardeningTest, ManyAnalysesShareTheExecutorInsteadOfNewThreads) {
  options_.workers = 1;
  options_.queue_limit = 8;
  Start();
  RegisterAll();
  const int before = Count("/proc/self/task");
  std::atomic<int> ok{0}, busy{0}, other{0}, done{0}, most{0};
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<v1::AnalyzeMergeResponse>> responses;
  v1::AnalyzeMergeRequest req;
  req.mutable_spec()->set_config_yaml(Ties({"e0", "e1"}));
  for (int i = 0; i < 50; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    responses.push_back(std::make_unique<v1::AnalyzeMergeResponse>());
    merges_->async()->AnalyzeMerge(
        contexts.back().get(), &req, responses.back().get(),
        [&](grpc::Status s) {
          if (s.ok()) {
            ++ok;
          } else if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
            ++busy;
          } else {
            ++other;
          }
          ++done;
        });
  }
  while (done < 50) {
    most = std::max(most.load(), Count("/proc/self/task"));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(other, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(ok + busy, 50);
  // gRPC may add a thread or two of its own; never one per call.
  EXPECT_LE(most, before + 6) << "threads: " << before << " -> " << most;
}

// Finding 11, part 1: crash leftovers and a corrupt database.
TEST_F(HardeningTest, StartupCollectsOrphansAndACorruptDatabaseIsNotServing) {
  Start();
  RegisterAll();
  ASSERT_TRUE(Upload("kept", models_ + "/e0").ok());
  server_.reset();
  for (const char* p : {"/uploads/x.tmp-1234", "/scratch/sweep-1",
                        "/results/abcd.mergeserve-tmp-1-2", "/stats/k.tmp-1",
                        "/stats/scratch-9"}) {
    fs::create_directories(data_ + p);
    testing::WriteFile(data_ + p + "/f", "partial");
  }
  Start();
  for (const char* p : {"/uploads/x.tmp-1234", "/scratch/sweep-1",
                        "/results/abcd.mergeserve-tmp-1-2", "/stats/k.tmp-1",
                        "/stats/scratch-9"}) {
    EXPECT_FALSE(fs::exists(data_ + p)) << p;
  }
  EXPECT_EQ(Count((data_ + "/checkpoints").c_str()), 1);  // "kept"
  server_.reset();
  // A database that is not one: NOT_SERVING, calls UNAVAILABLE naming it.
  testing::WriteFile(data_ + "/mergeserve.db", std::string(8192, 'g'));
  fs::remove(data_ + "/mergeserve.db-wal");
  fs::remove(data_ + "/mergeserve.db-shm");
  Start();
  EXPECT_FALSE(server_->degraded().empty());
  EXPECT_EQ(testing::HealthStatus(channel_), 2);  // NOT_SERVING
  v1::ListCheckpointsRequest list;
  v1::ListCheckpointsResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = registry_->ListCheckpoints(&ctx, list, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(s.error_message(), HasSubstr("mergeserve.db"));
  EXPECT_THAT(s.error_message(), HasSubstr("corrupt"));
}

// Finding 11, part 2: names in errors, empty names, never-started jobs.
TEST_F(HardeningTest, ErrorsStayShortAndNameOnlyWhatTheCallerSent) {
  Start();
  RegisterAll();
  v1::GetCheckpointRequest get;
  get.set_name(std::string(10240, 'n'));
  v1::Checkpoint out;
  grpc::ClientContext ctx;
  grpc::Status s = registry_->GetCheckpoint(&ctx, get, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(s.error_message().size(), 300u);
  // Deleting "" names nothing else (base's dependents used to leak here).
  v1::DeleteCheckpointRequest del;
  google::protobuf::Empty empty;
  grpc::ClientContext dctx;
  s = registry_->DeleteCheckpoint(&dctx, del, &empty);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), Not(HasSubstr("e0")));
  // Any message is capped, whatever produced it.
  grpc::Status capped =
      ToGrpcStatus(absl::InternalError(std::string(100000, 'm')));
  EXPECT_LE(capped.error_message().size(), kMaxErrorMessageBytes + 32);
}

TEST_F(HardeningTest, AJobCancelledBeforeItStartedLogsNoRunTime) {
  options_.workers = 1;
  Start();
  RegisterAll();
  WorkerGate gate(server_->jobs());
  v1::MergeJob job;
  ASSERT_TRUE(Create(Ties({"e0", "e1"}), &job).ok());
  ::testing::internal::CaptureStderr();
  v1::CancelMergeJobRequest cancel;
  cancel.set_id(job.id());
  grpc::ClientContext ctx;
  ASSERT_TRUE(merges_->CancelMergeJob(&ctx, cancel, &job).ok());
  const std::string log = ::testing::internal::GetCapturedStderr();
  gate.Release();
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  // Its end is logged like any job's, with no run time (it used to be
  // "now" minus a start time of 0: 1.8e9 s).
  EXPECT_THAT(log, ::testing::ContainsRegex(
                       "\"event\":\"job_finished\",\"job\":\"" + job.id() +
                       "\",\"tenant\":\"default\",\"state\":\"CANCELLED\""
                       "[^\n]*\"seconds\":\"0.000\""));
}

// Finding 11, part 3: a full disk was INTERNAL.
TEST_F(HardeningTest, AFullDiskIsResourceExhausted) {
  // The one-shot merge under a 64 KiB file size limit (what a full volume
  // answers, to this process).
  testing::WriteFile(models_ + "/ta.yaml",
                     "merge_method: task_arithmetic\nbase_model: base\n"
                     "models: [e0]\n");
  const std::string cmd = "ulimit -f 64; " + std::string(MERGESERVE_BINARY) +
                          " merge " + models_ + "/ta.yaml " + root_ +
                          "/full > " + root_ + "/full.log 2>&1";
  const int rc = std::system(("bash -c '" + cmd + "'").c_str());
  EXPECT_EQ(WEXITSTATUS(rc), 9);  // RESOURCE_EXHAUSTED
  EXPECT_THAT(testing::ReadFileBytes(root_ + "/full.log"),
              HasSubstr("disk is full"));
  EXPECT_FALSE(fs::exists(root_ + "/full"));
}

}  // namespace
}  // namespace mergeserve
