// The security suite: the real server over real TLS (certificates made with
// the openssl CLI) with bearer tokens. Every RPC is called as every kind of
// caller (no token, a bad, expired or revoked one, reader, writer, admin,
// and a writer of another tenant) and must answer the expected code; the
// transport refuses plaintext clients, clients that do not trust the
// server's CA, and, under mutual TLS, clients without a certificate;
// certificates rotate without a restart; and refusals and mutations are in
// the audit log.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <thread>

#include "gmock/gmock.h"
#include "grpc/authorizer.h"
#include "grpc/health_check.h"
#include "grpc/merge_server.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/store/sqlite_database.h"
#include "mergeserve/v1/admin.grpc.pb.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "mergeserve/v1/registry.grpc.pb.h"
#include "test_util.h"
#include "tls_test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TempDir;

// The callers of the matrix.
enum class Who {
  kNone,
  kBad,
  kExpired,
  kRevoked,
  kReader,
  kWriter,
  kAdmin,
  kOtherTenant
};
const char* Name(Who w) {
  switch (w) {
    case Who::kNone:
      return "no token";
    case Who::kBad:
      return "bad token";
    case Who::kExpired:
      return "expired token";
    case Who::kRevoked:
      return "revoked token";
    case Who::kReader:
      return "reader";
    case Who::kWriter:
      return "writer";
    case Who::kAdmin:
      return "admin";
    case Who::kOtherTenant:
      return "writer of another tenant";
  }
  return "?";
}

class SecurityTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    // Suite-wide, so outside any one test's folder: one per process (CTest
    // runs each test in a process of its own, in parallel).
    root_ = new std::string(TempDir("security_" + std::to_string(getpid())));
    pki_ = new testing::TestPki(testing::MakeTestPki(*root_ + "/pki"));
    testing::WriteModel(*root_ + "/models/base",
                        {{"w", {{4, 4}, std::vector<float>(16, 1.f)}}});
    std::vector<float> e(16, 1.5f);
    testing::WriteModel(*root_ + "/models/expert", {{"w", {{4, 4}, e}}});
    testing::WriteModel(*root_ + "/models/data",
                        {{"inputs", {{2, 4}, std::vector<float>(8, 0.f)}},
                         {"labels", {{2}, {0, 1}, DType::kI64}}});
  }
  static void TearDownTestSuite() {
    delete pki_;
    delete root_;
  }

  void SetUp() override {
    data_ = TempDir("security_data");
    MergeServer::Options o;
    o.listen = "127.0.0.1:0";
    o.data_dir = data_;
    o.allowed_roots = {*root_ + "/models"};
    o.auth_tokens = true;
    o.tls.cert = pki_->server;
    o.tls.key = pki_->server_key;
    o.tls.refresh_seconds = 1;
    auto s = MergeServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    addr_ = "localhost:" + std::to_string(server_->port());
    // Tokens straight into the server's database, as `mergeserve token`
    // does.
    auto db = SqliteDatabase::Open(data_ + "/mergeserve.db");
    ASSERT_TRUE(db.ok());
    auto store = TokenStore::Open(std::shared_ptr<Database>(*std::move(db)));
    ASSERT_TRUE(store.ok());
    store_ = std::move(*store);
    auto make = [&](const std::string& tenant, Role role, int64_t ttl_ms) {
      auto t = store_->Create(tenant, role, ttl_ms, "test");
      EXPECT_TRUE(t.ok()) << t.status();
      return *t;
    };
    tokens_[Who::kReader] = make("teamA", Role::kReader, 0).secret;
    tokens_[Who::kWriter] = make("teamA", Role::kWriter, 0).secret;
    tokens_[Who::kAdmin] = make("teamA", Role::kAdmin, 0).secret;
    tokens_[Who::kOtherTenant] = make("teamB", Role::kWriter, 0).secret;
    tokens_[Who::kExpired] = make("teamA", Role::kAdmin, 1).secret;
    NewToken revoked = make("teamA", Role::kAdmin, 0);
    ASSERT_TRUE(store_->Revoke(revoked.record.id).ok());
    tokens_[Who::kRevoked] = revoked.secret;
    // Right length and shape, unknown id.
    tokens_[Who::kBad] = "mst_000000000000_" + std::string(64, 'a');
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // expire it

    // Tenant A's resources, made by its writer.
    auto reg = Registry(Who::kWriter);
    ASSERT_TRUE(RegisterCheckpoint(*reg, Who::kWriter, "base", "base",
                                   v1::CHECKPOINT_ROLE_BASE, "")
                    .ok());
    ASSERT_TRUE(RegisterCheckpoint(*reg, Who::kWriter, "expert", "expert",
                                   v1::CHECKPOINT_ROLE_EXPERT, "base")
                    .ok());
  }

  std::shared_ptr<grpc::Channel> Channel(
      std::shared_ptr<grpc::ChannelCredentials> creds = nullptr) {
    if (creds == nullptr) {
      grpc::SslCredentialsOptions o;
      o.pem_root_certs = testing::ReadText(pki_->ca);
      creds = grpc::SslCredentials(o);
    }
    return grpc::CreateChannel(addr_, creds);
  }
  void Prepare(grpc::ClientContext* ctx, Who who) {
    auto it = tokens_.find(who);
    if (it != tokens_.end()) {
      ctx->AddMetadata("authorization", "Bearer " + it->second);
    }
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::seconds(60));
  }
  std::unique_ptr<v1::RegistryService::Stub> Registry(Who) {
    return v1::RegistryService::NewStub(Channel());
  }
  grpc::Status RegisterCheckpoint(v1::RegistryService::Stub& stub, Who who,
                                  const std::string& name,
                                  const std::string& folder,
                                  v1::CheckpointRole role,
                                  const std::string& base) {
    grpc::ClientContext ctx;
    Prepare(&ctx, who);
    v1::RegisterCheckpointRequest req;
    req.mutable_checkpoint()->set_name(name);
    req.mutable_checkpoint()->set_path(*root_ + "/models/" + folder);
    req.mutable_checkpoint()->set_role(role);
    req.mutable_checkpoint()->set_base(base);
    v1::Checkpoint out;
    return stub.RegisterCheckpoint(&ctx, req, &out);
  }
  // A finished job of tenant A (a fresh one per call: `lambda` varies it).
  std::string SucceededJob(double lambda) {
    auto merges = v1::MergeService::NewStub(Channel());
    v1::CreateMergeJobRequest req;
    req.mutable_spec()->set_config_yaml(
        "merge_method: task_arithmetic\nbase_model: base\nmodels: [expert]\n"
        "parameters: {lambda: " +
        std::to_string(lambda) + "}\n");
    v1::MergeJob job;
    grpc::ClientContext ctx;
    Prepare(&ctx, Who::kWriter);
    EXPECT_TRUE(merges->CreateMergeJob(&ctx, req, &job).ok());
    for (int i = 0; i < 1000; ++i) {
      grpc::ClientContext g;
      Prepare(&g, Who::kWriter);
      v1::GetMergeJobRequest get;
      get.set_id(job.id());
      merges->GetMergeJob(&g, get, &job);
      if (job.state() == v1::JOB_STATE_SUCCEEDED) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
    return job.id();
  }
  std::string FreshDataset(const std::string& name) {
    auto reg = Registry(Who::kWriter);
    grpc::ClientContext ctx;
    Prepare(&ctx, Who::kWriter);
    v1::RegisterDatasetRequest req;
    req.mutable_dataset()->set_name(name);
    req.mutable_dataset()->set_task("t");
    req.mutable_dataset()->set_role(v1::DATASET_ROLE_EVAL);
    req.mutable_dataset()->set_path(*root_ + "/models/data/model.safetensors");
    v1::Dataset out;
    EXPECT_TRUE(reg->RegisterDataset(&ctx, req, &out).ok());
    return name;
  }

  static std::string* root_;
  static testing::TestPki* pki_;
  std::string data_, addr_;
  std::unique_ptr<MergeServer> server_;
  std::map<Who, std::string> tokens_;
  std::unique_ptr<TokenStore> store_;
};
std::string* SecurityTest::root_ = nullptr;
testing::TestPki* SecurityTest::pki_ = nullptr;

// Drains a server stream, returning its status.
template <typename Reader, typename Msg>
grpc::Status Drain(Reader reader, Msg* msg) {
  while (reader->Read(msg)) {
  }
  return reader->Finish();
}

// One RPC as a caller makes it. `fresh` is a per-call suffix for names.
using Call = std::function<grpc::Status(SecurityTest*, grpc::ClientContext*,
                                        const std::string& fresh)>;
struct RpcCase {
  std::string method;
  Call call;
  // What the writer of another tenant gets: NOT_FOUND where the call names
  // tenant A's resources; OK-or-own-errors (-1) where it names its own.
  int other_tenant;
};

TEST_F(SecurityTest, EveryRpcAnswersEveryCallerAsItsRoleAndTenantAllow) {
  auto ch = Channel();
  auto reg = v1::RegistryService::NewStub(ch);
  auto merges = v1::MergeService::NewStub(ch);
  auto admin = v1::AdminService::NewStub(ch);
  auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(ch);
  const std::string kTies =
      "merge_method: ties\nbase_model: base\nmodels: [expert]\n";
  constexpr int kNotFound = static_cast<int>(grpc::StatusCode::NOT_FOUND);
  constexpr int kDenied = static_cast<int>(grpc::StatusCode::PERMISSION_DENIED);
  constexpr int kAny = -1;
  const std::vector<RpcCase> cases = {
      {"mergeserve.v1.RegistryService/RegisterCheckpoint",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string& f) {
         v1::RegisterCheckpointRequest r;
         r.mutable_checkpoint()->set_name("e-" + f);
         r.mutable_checkpoint()->set_path(*root_ + "/models/expert");
         r.mutable_checkpoint()->set_role(v1::CHECKPOINT_ROLE_EXPERT);
         r.mutable_checkpoint()->set_base("base");  // tenant A's
         v1::Checkpoint o;
         return reg->RegisterCheckpoint(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.RegistryService/UploadCheckpoint",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string& f) {
         v1::Checkpoint o;
         auto w = reg->UploadCheckpoint(c, &o);
         v1::UploadCheckpointRequest h;
         h.mutable_header()->mutable_checkpoint()->set_name("u-" + f);
         h.mutable_header()->mutable_checkpoint()->set_role(
             v1::CHECKPOINT_ROLE_BASE);
         auto* file = h.mutable_header()->add_files();
         file->set_name("model.safetensors");
         file->set_size_bytes(8);
         file->set_sha256(std::string(64, '0'));
         w->Write(h);
         w->WritesDone();
         return w->Finish();  // allowed callers: DATA_LOSS (nothing sent)
       },
       kAny},
      {"mergeserve.v1.RegistryService/GetCheckpoint",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::GetCheckpointRequest r;
         r.set_name("expert");
         v1::Checkpoint o;
         return reg->GetCheckpoint(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.RegistryService/ListCheckpoints",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::ListCheckpointsRequest r;
         v1::ListCheckpointsResponse o;
         grpc::Status s = reg->ListCheckpoints(c, r, &o);
         bool a = false;  // tenant A's show only to tenant A
         for (const auto& cp : o.checkpoints()) a |= cp.tenant() == "teamA";
         return s.ok() && !a ? grpc::Status(grpc::StatusCode::NOT_FOUND, "")
                             : s;
       },
       kNotFound},
      {"mergeserve.v1.RegistryService/DeleteCheckpoint",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::DeleteCheckpointRequest r;
         r.set_name("base");  // A's: still the base of `expert`
         google::protobuf::Empty o;
         return reg->DeleteCheckpoint(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.RegistryService/RegisterDataset",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string& f) {
         v1::RegisterDatasetRequest r;
         r.mutable_dataset()->set_name("d-" + f);
         r.mutable_dataset()->set_task("t");
         r.mutable_dataset()->set_role(v1::DATASET_ROLE_EVAL);
         r.mutable_dataset()->set_path(*root_ +
                                       "/models/data/model.safetensors");
         v1::Dataset o;
         return reg->RegisterDataset(c, r, &o);
       },
       kAny},
      {"mergeserve.v1.RegistryService/UploadDataset",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string& f) {
         v1::Dataset o;
         auto w = reg->UploadDataset(c, &o);
         v1::UploadCheckpointRequest h;
         h.mutable_header()->mutable_dataset()->set_name("ud-" + f);
         h.mutable_header()->mutable_dataset()->set_task("t");
         h.mutable_header()->mutable_dataset()->set_role(v1::DATASET_ROLE_EVAL);
         auto* file = h.mutable_header()->add_files();
         file->set_name("d.safetensors");
         file->set_size_bytes(8);
         file->set_sha256(std::string(64, '0'));
         w->Write(h);
         w->WritesDone();
         return w->Finish();
       },
       kAny},
      {"mergeserve.v1.RegistryService/GetDataset",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string& f) {
         v1::GetDatasetRequest r;
         r.set_name(t->FreshDataset("g-" + f));
         v1::Dataset o;
         return reg->GetDataset(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.RegistryService/ListDatasets",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string& f) {
         t->FreshDataset("l-" + f);
         v1::ListDatasetsRequest r;
         v1::ListDatasetsResponse o;
         grpc::Status s = reg->ListDatasets(c, r, &o);
         bool a = false;
         for (const auto& d : o.datasets()) a |= d.tenant() == "teamA";
         return s.ok() && !a ? grpc::Status(grpc::StatusCode::NOT_FOUND, "")
                             : s;
       },
       kNotFound},
      {"mergeserve.v1.RegistryService/DeleteDataset",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string& f) {
         v1::DeleteDatasetRequest r;
         r.set_name(t->FreshDataset("x-" + f));
         google::protobuf::Empty o;
         return reg->DeleteDataset(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/CreateMergeJob",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::CreateMergeJobRequest r;
         r.mutable_spec()->set_config_yaml(kTies);  // A's checkpoints
         v1::MergeJob o;
         return merges->CreateMergeJob(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/GetMergeJob",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         v1::GetMergeJobRequest r;
         r.set_id(t->SucceededJob(0.5));
         v1::MergeJob o;
         return merges->GetMergeJob(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/ListMergeJobs",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         t->SucceededJob(0.5);
         v1::ListMergeJobsRequest r;
         v1::ListMergeJobsResponse o;
         grpc::Status s = merges->ListMergeJobs(c, r, &o);
         bool a = false;
         for (const auto& j : o.jobs()) a |= j.tenant() == "teamA";
         return s.ok() && !a ? grpc::Status(grpc::StatusCode::NOT_FOUND, "")
                             : s;
       },
       kNotFound},
      {"mergeserve.v1.MergeService/CancelMergeJob",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         v1::CancelMergeJobRequest r;
         r.set_id(t->SucceededJob(0.5));
         v1::MergeJob o;
         return merges->CancelMergeJob(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/DeleteMergeJob",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string& f) {
         v1::DeleteMergeJobRequest r;
         r.set_id(t->SucceededJob(0.1 + 0.01 * static_cast<double>(f.size())));
         google::protobuf::Empty o;
         return merges->DeleteMergeJob(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/WatchMergeJob",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         v1::WatchMergeJobRequest r;
         r.set_id(t->SucceededJob(0.5));
         v1::JobEvent e;
         return Drain(merges->WatchMergeJob(c, r), &e);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/AnalyzeMerge",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::AnalyzeMergeRequest r;
         r.mutable_spec()->set_config_yaml(kTies);
         v1::AnalyzeMergeResponse o;
         return merges->AnalyzeMerge(c, r, &o);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/DownloadMergeResult",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         v1::DownloadMergeResultRequest r;
         r.set_id(t->SucceededJob(0.5));
         v1::DownloadChunk chunk;
         return Drain(merges->DownloadMergeResult(c, r), &chunk);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/Evaluate",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         v1::EvaluateRequest r;
         r.set_job_id(t->SucceededJob(0.5));
         v1::EvaluateEvent e;
         return Drain(merges->Evaluate(c, r), &e);
       },
       kNotFound},
      {"mergeserve.v1.MergeService/Sweep",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::SweepRequest r;
         r.mutable_spec()->set_config_yaml(kTies);
         r.add_lambdas(0.5);
         v1::SweepEvent e;
         return Drain(merges->Sweep(c, r), &e);
       },
       kNotFound},
      {"mergeserve.v1.AdminService/CreateToken",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::CreateTokenRequest r;
         r.set_role(v1::ROLE_READER);
         v1::CreateTokenResponse o;
         return admin->CreateToken(c, r, &o);
       },
       kDenied},
      {"mergeserve.v1.AdminService/ListTokens",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::ListTokensRequest r;
         v1::ListTokensResponse o;
         return admin->ListTokens(c, r, &o);
       },
       kDenied},
      {"mergeserve.v1.AdminService/RevokeToken",
       [&](SecurityTest* t, grpc::ClientContext* c, const std::string&) {
         v1::RevokeTokenRequest r;
         r.set_id(t->store_->Create("teamA", Role::kReader, 0, "")->record.id);
         v1::Token o;
         return admin->RevokeToken(c, r, &o);
       },
       kDenied},
      {"mergeserve.v1.AdminService/GetQuota",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::GetQuotaRequest r;
         v1::QuotaResponse o;
         return admin->GetQuota(c, r, &o);
       },
       kDenied},
      {"mergeserve.v1.AdminService/SetQuota",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::SetQuotaRequest r;
         r.mutable_quota()->set_max_streams(32);
         v1::QuotaResponse o;
         return admin->SetQuota(c, r, &o);
       },
       kDenied},
      {"mergeserve.v1.AdminService/PublishCheckpoint",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         v1::PublishCheckpointRequest r;
         r.set_name("base");
         r.set_published(false);
         v1::Checkpoint o;
         return admin->PublishCheckpoint(c, r, &o);
       },
       kDenied},
      {"grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
       [&](SecurityTest*, grpc::ClientContext* c, const std::string&) {
         auto stream = reflection->ServerReflectionInfo(c);
         grpc::reflection::v1alpha::ServerReflectionRequest r;
         r.set_list_services("");
         stream->Write(r);
         stream->WritesDone();
         grpc::reflection::v1alpha::ServerReflectionResponse o;
         bool listed = false;
         while (stream->Read(&o)) {
           listed |= o.list_services_response().service_size() > 0;
         }
         grpc::Status s = stream->Finish();
         return s.ok() && !listed
                    ? grpc::Status(grpc::StatusCode::INTERNAL, "no services")
                    : s;
       },
       kAny},
  };
  // The table covers every RPC the server has a policy for.
  std::set<std::string> covered, policies;
  for (const RpcCase& c : cases) covered.insert(c.method);
  for (const RpcPolicy& p : RpcPolicies()) policies.insert(p.method);
  EXPECT_EQ(covered, policies);

  int n = 0;
  for (const RpcCase& rc : cases) {
    const RpcPolicy* policy = FindRpcPolicy(rc.method);
    ASSERT_NE(policy, nullptr) << rc.method;
    for (Who who :
         {Who::kNone, Who::kBad, Who::kExpired, Who::kRevoked, Who::kReader,
          Who::kWriter, Who::kAdmin, Who::kOtherTenant}) {
      grpc::ClientContext ctx;
      Prepare(&ctx, who);
      const grpc::Status s = rc.call(this, &ctx, std::to_string(++n));
      const std::string what =
          rc.method + " as " + Name(who) + ": " +
          std::to_string(static_cast<int>(s.error_code())) + " " +
          s.error_message();
      const Role role = who == Who::kReader  ? Role::kReader
                        : who == Who::kAdmin ? Role::kAdmin
                                             : Role::kWriter;
      switch (who) {
        case Who::kNone:
        case Who::kBad:
        case Who::kExpired:
        case Who::kRevoked:
          EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << what;
          break;
        case Who::kReader:
        case Who::kWriter:
        case Who::kAdmin:
          if (role < policy->role) {
            EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
                << what;
          } else {
            // Allowed: whatever the call itself answers, never a refusal
            // of the caller, never a leak of another tenant.
            EXPECT_NE(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
                << what;
            EXPECT_NE(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
                << what;
            EXPECT_NE(s.error_code(), grpc::StatusCode::INTERNAL) << what;
            EXPECT_NE(s.error_code(), grpc::StatusCode::NOT_FOUND) << what;
          }
          break;
        case Who::kOtherTenant:
          if (rc.other_tenant == kAny) {
            EXPECT_NE(s.error_code(), grpc::StatusCode::UNAUTHENTICATED)
                << what;
            EXPECT_NE(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
                << what;
          } else {
            EXPECT_EQ(static_cast<int>(s.error_code()), rc.other_tenant)
                << what;
          }
          break;
      }
    }
  }
  // Health stays open for probes, token or not.
  EXPECT_EQ(testing::HealthStatus(ch), 1);

  // Every refusal and every mutation is in the audit log.
  const std::string audit = testing::ReadText(data_ + "/audit.log");
  int unauthenticated = 0, denied = 0;
  std::istringstream lines(audit);
  for (std::string line; std::getline(lines, line);) {
    unauthenticated += line.find("\"UNAUTHENTICATED\"") != std::string::npos;
    denied += line.find("\"PERMISSION_DENIED\"") != std::string::npos;
  }
  EXPECT_EQ(unauthenticated, 4 * static_cast<int>(cases.size()));
  EXPECT_GE(denied, 1);
  EXPECT_THAT(audit, HasSubstr("\"method\":\"mergeserve.v1.RegistryService/"
                               "RegisterCheckpoint\",\"resource\":"
                               "\"checkpoints/expert\",\"code\":\"OK\""));
  EXPECT_THAT(audit, HasSubstr("\"tenant\":\"teamB\""));
  // Secrets never reach the log.
  for (const auto& [who, token] : tokens_) {
    EXPECT_EQ(audit.find(token.substr(17)), std::string::npos) << Name(who);
  }
}

TEST_F(SecurityTest, AnAdminActsInAnotherTenantOnlyByNamingIt) {
  auto reg = v1::RegistryService::NewStub(Channel());
  v1::GetCheckpointRequest get;
  get.set_name("expert");
  v1::Checkpoint out;
  {
    // The writer of teamB cannot borrow teamA with the header.
    grpc::ClientContext ctx;
    Prepare(&ctx, Who::kOtherTenant);
    ctx.AddMetadata(kTenantHeader, "teamA");
    EXPECT_EQ(reg->GetCheckpoint(&ctx, get, &out).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    auto admin = v1::AdminService::NewStub(Channel());
    v1::CreateTokenRequest req;
    req.set_tenant("ops");
    req.set_role(v1::ROLE_ADMIN);
    v1::CreateTokenResponse t;
    grpc::ClientContext ctx;
    Prepare(&ctx, Who::kAdmin);
    ASSERT_TRUE(admin->CreateToken(&ctx, req, &t).ok());
    EXPECT_EQ(t.token().tenant(), "ops");
    EXPECT_THAT(t.secret(), ::testing::StartsWith("mst_"));
    // An admin of another tenant sees teamA's checkpoint only through the
    // header.
    grpc::ClientContext plain;
    plain.AddMetadata("authorization", "Bearer " + t.secret());
    EXPECT_EQ(reg->GetCheckpoint(&plain, get, &out).error_code(),
              grpc::StatusCode::NOT_FOUND);
    grpc::ClientContext acting;
    acting.AddMetadata("authorization", "Bearer " + t.secret());
    acting.AddMetadata(kTenantHeader, "teamA");
    ASSERT_TRUE(reg->GetCheckpoint(&acting, get, &out).ok());
    EXPECT_EQ(out.tenant(), "teamA");
  }
}

// A token's lifetime is bounded before it is scaled to ms: a huge
// ttl_seconds used to overflow int64 (undefined behaviour, a token that
// expired before it was made).
TEST_F(SecurityTest, TokenLifetimesAreBoundedToAHundredYears) {
  auto admin = v1::AdminService::NewStub(Channel());
  auto create = [&](int64_t ttl, v1::CreateTokenResponse* out) {
    v1::CreateTokenRequest req;
    req.set_role(v1::ROLE_READER);
    req.set_ttl_seconds(ttl);
    grpc::ClientContext ctx;
    Prepare(&ctx, Who::kAdmin);
    return admin->CreateToken(&ctx, req, out);
  };
  v1::CreateTokenResponse hour;
  ASSERT_TRUE(create(3600, &hour).ok());
  EXPECT_EQ(hour.token().expire_time().seconds() -
                hour.token().create_time().seconds(),
            3600);
  v1::CreateTokenResponse longest;
  ASSERT_TRUE(create(int64_t{36500} * 86400, &longest).ok());
  EXPECT_GT(longest.token().expire_time().seconds(),
            longest.token().create_time().seconds());
  for (int64_t bad : {int64_t{36500} * 86400 + 1, int64_t{1} << 62,
                      std::numeric_limits<int64_t>::max(), int64_t{-1}}) {
    v1::CreateTokenResponse out;
    const grpc::Status s = create(bad, &out);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(s.error_message(), ::testing::HasSubstr("ttl_seconds"));
  }
}

TEST_F(SecurityTest, PublishedCheckpointsServeEveryTenantAndOnlyAdminsDelete) {
  auto admin = v1::AdminService::NewStub(Channel());
  v1::PublishCheckpointRequest pub;
  pub.set_name("base");
  pub.set_published(true);
  v1::Checkpoint out;
  grpc::ClientContext ctx;
  Prepare(&ctx, Who::kAdmin);
  ASSERT_TRUE(admin->PublishCheckpoint(&ctx, pub, &out).ok());
  EXPECT_TRUE(out.published());
  // teamB merges on teamA's published base with an expert of its own.
  auto reg = Registry(Who::kOtherTenant);
  ASSERT_TRUE(RegisterCheckpoint(*reg, Who::kOtherTenant, "mine", "expert",
                                 v1::CHECKPOINT_ROLE_EXPERT, "base")
                  .ok());
  auto merges = v1::MergeService::NewStub(Channel());
  v1::CreateMergeJobRequest req;
  req.mutable_spec()->set_config_yaml(
      "merge_method: task_arithmetic\nbase_model: base\nmodels: [mine]\n");
  v1::MergeJob job;
  grpc::ClientContext c2;
  Prepare(&c2, Who::kOtherTenant);
  ASSERT_TRUE(merges->CreateMergeJob(&c2, req, &job).ok());
  EXPECT_EQ(job.tenant(), "teamB");
  // teamA's writer may not delete it any more; its admin may, once
  // nothing depends on it.
  grpc::ClientContext c3;
  Prepare(&c3, Who::kWriter);
  v1::DeleteCheckpointRequest del;
  del.set_name("base");
  google::protobuf::Empty empty;
  grpc::Status s = reg->DeleteCheckpoint(&c3, del, &empty);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("only an admin"));
  grpc::ClientContext c4;
  Prepare(&c4, Who::kAdmin);
  s = reg->DeleteCheckpoint(&c4, del, &empty);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << s.error_message();
  // The dependents of other tenants are counted, not named.
  EXPECT_THAT(s.error_message(), HasSubstr("1 checkpoint(s) of other tenants"));
  EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr("mine")));
}

TEST_F(SecurityTest, TransportRefusesPlaintextAndUntrustedCertificates) {
  // A plaintext client against the TLS port.
  EXPECT_EQ(testing::HealthStatus(
                grpc::CreateChannel(addr_, grpc::InsecureChannelCredentials())),
            -1);
  // A client that trusts another CA.
  grpc::SslCredentialsOptions wrong;
  wrong.pem_root_certs = testing::ReadText(pki_->other_ca);
  EXPECT_EQ(testing::HealthStatus(Channel(grpc::SslCredentials(wrong))), -1);
  // The right CA.
  EXPECT_EQ(testing::HealthStatus(Channel()), 1);
}

TEST_F(SecurityTest, MutualTlsRequiresAClientCertificate) {
  MergeServer::Options o;
  o.listen = "127.0.0.1:0";
  o.data_dir = TempDir("mtls_data");
  o.auth_tokens = true;
  o.tls.cert = pki_->server;
  o.tls.key = pki_->server_key;
  o.tls.client_ca = pki_->ca;
  auto s = MergeServer::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string addr = "localhost:" + std::to_string((*s)->port());
  grpc::SslCredentialsOptions no_cert;
  no_cert.pem_root_certs = testing::ReadText(pki_->ca);
  EXPECT_EQ(testing::HealthStatus(
                grpc::CreateChannel(addr, grpc::SslCredentials(no_cert))),
            -1);
  grpc::SslCredentialsOptions with_cert = no_cert;
  with_cert.pem_cert_chain = testing::ReadText(pki_->client);
  with_cert.pem_private_key = testing::ReadText(pki_->client_key);
  EXPECT_EQ(testing::HealthStatus(
                grpc::CreateChannel(addr, grpc::SslCredentials(with_cert))),
            1);
  // A client certificate from an untrusted CA is refused too.
  const std::string dir = TempDir("stranger");
  testing::IssueServerCert(dir, pki_->other_ca, pki_->other_ca_key,
                           dir + "/c.pem", dir + "/c.key");
  grpc::SslCredentialsOptions stranger = no_cert;
  stranger.pem_cert_chain = testing::ReadText(dir + "/c.pem");
  stranger.pem_private_key = testing::ReadText(dir + "/c.key");
  EXPECT_EQ(testing::HealthStatus(
                grpc::CreateChannel(addr, grpc::SslCredentials(stranger))),
            -1);
}

TEST_F(SecurityTest, RotatedCertificatesAreServedWithoutARestart) {
  // The server's files are rewritten with a certificate from another CA
  // (what cert-manager does); new connections soon see it.
  const std::string dir = TempDir("rotate");
  fs::copy_file(pki_->server, dir + "/tls.crt");
  fs::copy_file(pki_->server_key, dir + "/tls.key");
  MergeServer::Options o;
  o.listen = "127.0.0.1:0";
  o.data_dir = TempDir("rotate_data");
  o.auth_tokens = true;
  o.tls.cert = dir + "/tls.crt";
  o.tls.key = dir + "/tls.key";
  o.tls.refresh_seconds = 1;
  auto s = MergeServer::Start(o);
  ASSERT_TRUE(s.ok()) << s.status();
  const std::string addr = "localhost:" + std::to_string((*s)->port());
  auto trusting = [&](const std::string& ca) {
    grpc::SslCredentialsOptions opt;
    opt.pem_root_certs = testing::ReadText(ca);
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a fresh connection
    return grpc::CreateCustomChannel(addr, grpc::SslCredentials(opt), args);
  };
  ASSERT_EQ(testing::HealthStatus(trusting(pki_->ca)), 1);
  EXPECT_EQ(testing::HealthStatus(trusting(pki_->other_ca)), -1);
  testing::IssueServerCert(dir, pki_->other_ca, pki_->other_ca_key,
                           dir + "/tls.crt", dir + "/tls.key");
  int status = -1;
  for (int i = 0; i < 100 && status != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = testing::HealthStatus(trusting(pki_->other_ca));
  }
  EXPECT_EQ(status, 1) << "the rotated certificate was not picked up";
  EXPECT_EQ(testing::HealthStatus(trusting(pki_->ca)), -1);
}

TEST_F(SecurityTest, ServingOffLoopbackNeedsTlsAndTokensOrInsecure) {
  MergeServer::Options o;
  o.listen = "0.0.0.0:0";
  o.data_dir = TempDir("modes");
  auto dev = MergeServer::Start(o);  // development mode, all interfaces
  EXPECT_EQ(dev.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(dev.status().message()), HasSubstr("--insecure"));
  o.auth_tokens = true;  // tokens, but in plaintext
  EXPECT_EQ(MergeServer::Start(o).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Metrics stay on loopback in development mode too.
  MergeServer::Options m;
  m.listen = "127.0.0.1:0";
  m.metrics_listen = "0.0.0.0:0";
  m.data_dir = TempDir("modes_metrics");
  EXPECT_EQ(MergeServer::Start(m).status().code(),
            absl::StatusCode::kFailedPrecondition);
  o.metrics_listen = "";
  o.insecure = true;  // explicitly
  auto insecure = MergeServer::Start(o);
  EXPECT_TRUE(insecure.ok()) << insecure.status();
  // Development mode's default address is loopback.
  MergeServer::Options d;
  d.data_dir = TempDir("modes_default");
  d.listen = "";
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:1"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:1"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.5:50051"));
}

}  // namespace
}  // namespace mergeserve
