#include "grpc/merge_server.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/server_builder.h>
#include <sys/resource.h>
#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/admin_service.h"
#include "grpc/authorizer.h"
#include "grpc/merge_service.h"
#include "grpc/reflection_service.h"
#include "grpc/registry_service.h"
#include "grpc/service_metrics.h"
#include "grpc/status_util.h"
#include "mergeserve/auth/audit_log.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/base/background_executor.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/jobs/orphans.h"
#include "mergeserve/store/database.h"

namespace mergeserve {
namespace {

// Answers every call of a degraded server with UNAVAILABLE.
class UnavailableService : public grpc::CallbackGenericService {
 public:
  explicit UnavailableService(std::string why) : why_(std::move(why)) {}
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* ctx) override {
    class Reactor : public grpc::ServerGenericBidiReactor {
     public:
      explicit Reactor(const std::string& why) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, why));
      }
      void OnDone() override { delete this; }
    };
    return new Reactor(why_);
  }

 private:
  std::string why_;
};

// Uploads and merged models each hold a descriptor per open file: take
// the hard limit the system allows.
void RaiseFileLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace

bool IsLoopbackAddress(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  std::string host =
      colon == std::string::npos ? listen : listen.substr(0, colon);
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

MergeServer::MergeServer() = default;

absl::Status MergeServer::Prepare(Options& options) {
  MergeServer* s = this;
  // The mode decides what may be served where.
  const bool tls = !options.tls.cert.empty();
  if (options.listen.empty()) {
    options.listen = options.auth_tokens ? "0.0.0.0:50051" : "127.0.0.1:50051";
  }
  s->listen_ = options.listen;
  s->mode_ = !options.auth_tokens ? "development (no authentication)"
             : tls ? (options.tls.client_ca.empty() ? "tokens over TLS"
                                                    : "tokens over mutual TLS")
                   : "tokens over plaintext";
  if (!IsLoopbackAddress(options.listen) && !(options.auth_tokens && tls) &&
      !options.insecure) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to serve ", options.listen, " in mode '", s->mode_,
        "': off loopback the server needs --auth token with --tls-cert and "
        "--tls-key; pass --insecure to serve it anyway (e.g. behind a mesh "
        "that terminates TLS)"));
  }
  if (!options.metrics_listen.empty() &&
      !IsLoopbackAddress(options.metrics_listen) && !options.insecure &&
      !options.auth_tokens) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing to expose metrics on ", options.metrics_listen,
                     " in development mode; pass --insecure to do it anyway"));
  }
  MS_ASSIGN_OR_RETURN(s->creds_, ServerCredentialsFor(options.tls));
  if (options.replica_id.empty()) {
    char host[256] = {0};
    options.replica_id =
        gethostname(host, sizeof host - 1) == 0 && host[0] ? host : "replica";
  }
  s->replica_id_ = options.replica_id;
  SetTempTag(options.replica_id);
  MS_ASSIGN_OR_RETURN(StorageRoots roots,
                      StorageRoots::Create(options.data_dir, {}));
  s->data_dir_ = roots.data_dir();
  SetDataDirForMessages(s->data_dir_);
  return absl::OkStatus();
}

absl::StatusOr<std::string> MergeServer::Check(Options options) {
  std::unique_ptr<MergeServer> s(new MergeServer());
  MS_RETURN_IF_ERROR(s->Prepare(options));
  const std::string url = options.database.empty()
                              ? s->data_dir_ + "/mergeserve.db"
                              : options.database;
  MS_ASSIGN_OR_RETURN(auto db, OpenDatabase(url, options.database_options));
  // Opening each store applies its migrations.
  MS_RETURN_IF_ERROR(TenantQuotas::Open(db, options.default_quota).status());
  MS_RETURN_IF_ERROR(TokenStore::Open(db).status());
  CheckpointRegistry::Options ro;
  ro.data_dir = s->data_dir_;
  ro.allowed_roots = options.allowed_roots;
  ro.db = db;
  MS_RETURN_IF_ERROR(CheckpointRegistry::Create(ro).status());
  MS_RETURN_IF_ERROR(JobStore::Open(db).status());
  return absl::StrCat("mode ", s->mode_, ", listen ", s->listen_, ", data ",
                      s->data_dir_, ", database ", db->Describe(),
                      " (schema current), replica ", s->replica_id_);
}

absl::StatusOr<std::unique_ptr<MergeServer>> MergeServer::Start(
    Options options) {
  std::unique_ptr<MergeServer> s(new MergeServer());
  MS_RETURN_IF_ERROR(s->Prepare(options));
  auto creds = s->creds_;
  RaiseFileLimit();
  const std::string db_path = options.database.empty()
                                  ? s->data_dir_ + "/mergeserve.db"
                                  : options.database;
  auto db = OpenDatabase(db_path, options.database_options);
  if (!db.ok()) {
    if (absl::IsDataLoss(db.status())) {
      LogEvent(
          "database_corrupt",
          {{"file", db_path}, {"error", std::string(db.status().message())}});
      MS_RETURN_IF_ERROR(s->StartDegraded(
          options, creds,
          absl::StrCat("the server's database ", db_path,
                       " is corrupt; restore it from a backup (",
                       db.status().message(), ")")));
      return s;
    }
    return db.status();
  }
  s->db_ = *std::move(db);
  s->database_ = s->db_->Describe();

  MS_ASSIGN_OR_RETURN(s->metrics_,
                      ServiceMetrics::Create(options.metrics_listen));
  MS_ASSIGN_OR_RETURN(s->quotas_,
                      TenantQuotas::Open(s->db_, options.default_quota));
  // Tokens exist in every mode, so an admin can prepare them before turning
  // authentication on.
  MS_ASSIGN_OR_RETURN(s->tokens_, TokenStore::Open(s->db_));
  MS_ASSIGN_OR_RETURN(
      s->audit_,
      AuditLog::Open(options.audit_log.empty() ? s->data_dir_ + "/audit.log"
                                               : options.audit_log));
  Authorizer::Options ao;
  ao.tokens = options.auth_tokens ? s->tokens_.get() : nullptr;
  ao.quotas = s->quotas_.get();
  ao.audit = s->audit_.get();
  s->auth_ = std::make_unique<Authorizer>(ao);

  CheckpointRegistry::Options ro;
  ro.data_dir = s->data_dir_;
  ro.allowed_roots = options.allowed_roots;
  ro.db = s->db_;
  MS_ASSIGN_OR_RETURN(s->registry_, CheckpointRegistry::Create(ro));
  JobManager::Options jo;
  jo.data_dir = s->data_dir_;
  jo.registry = s->registry_.get();
  jo.db = s->db_;
  jo.quotas = s->quotas_.get();
  jo.workers = options.workers;
  jo.queue_limit = options.queue_limit;
  jo.memory_budget = options.memory_budget;
  jo.cache_budget = options.cache_budget;
  jo.device = options.device;
  jo.retention_ms = options.job_retention_ms;
  jo.replica_id = options.replica_id;
  jo.lease_ms = options.lease_ms;
  jo.max_attempts = options.max_attempts;
  ServiceMetrics* metrics = s->metrics_.get();
  jo.on_finished = [metrics](const JobRecord& j) { metrics->RecordJob(j); };
  {
    // Before this replica writes anything: on a shared data dir, only
    // temporaries of replicas that are gone (or of this one before it
    // restarted) go; each is logged.
    MS_ASSIGN_OR_RETURN(auto job_store, JobStore::Open(s->db_));
    MS_ASSIGN_OR_RETURN(
        auto live,
        job_store->LiveReplicas(options.replica_id, 2 * options.lease_ms));
    CollectOrphanedTemporaries(s->data_dir_, live);
  }
  MS_ASSIGN_OR_RETURN(s->jobs_, JobManager::Create(jo));
  metrics->WatchJobs(s->jobs_.get());
  JobManager* jobs = s->jobs_.get();
  s->uploads_ = std::make_unique<UploadGuard>(
      options.uploads, s->quotas_.get(),
      [jobs](const std::string& tenant) { return jobs->StoredBytes(tenant); });
  // Parsing, planning and validating requests: two threads, a bounded
  // backlog, never gRPC's callback threads.
  s->control_ = std::make_unique<BackgroundExecutor>(2, 64);
  s->registry_service_ = std::make_unique<RegistryServiceImpl>(
      *s->registry_, *s->auth_, *s->control_, *s->uploads_);
  MergeServiceHooks hooks;
  hooks.on_bytes_streamed = [metrics](int64_t n) {
    metrics->AddBytesStreamed(n);
  };
  s->merge_service_ = std::make_unique<MergeServiceImpl>(
      *s->jobs_, *s->auth_, *s->control_, options.config_limits, hooks);
  s->admin_service_ = std::make_unique<AdminServiceImpl>(
      options.auth_tokens ? s->tokens_.get() : nullptr, *s->quotas_,
      *s->registry_, *s->jobs_, *s->auth_);
  s->reflection_service_ = std::make_unique<ReflectionServiceImpl>(
      *s->auth_,
      std::vector<std::string>{
          "mergeserve.v1.RegistryService", "mergeserve.v1.MergeService",
          "mergeserve.v1.AdminService",
          "grpc.reflection.v1alpha.ServerReflection", "grpc.health.v1.Health"});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.RegisterService(s->registry_service_.get());
  builder.RegisterService(s->merge_service_.get());
  builder.RegisterService(s->admin_service_.get());
  builder.RegisterService(s->reflection_service_.get());
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(metrics->InterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen));
  }
  // The registry is loaded: report SERVING for the server and each service.
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  LogEvent("server_started", {{"listen", options.listen},
                              {"port", std::to_string(s->port_)},
                              {"mode", s->mode_},
                              {"audit_log", s->audit_->path()}});
  return s;
}

absl::Status MergeServer::StartDegraded(
    const Options& options, std::shared_ptr<grpc::ServerCredentials> creds,
    const std::string& why) {
  degraded_ = why;
  unavailable_ = std::make_unique<UnavailableService>(why);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, creds, &port_);
  builder.RegisterCallbackGenericService(unavailable_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen));
  }
  server_->GetHealthCheckService()->SetServingStatus(false);
  return absl::OkStatus();
}

int MergeServer::metrics_port() const {
  return metrics_ != nullptr ? metrics_->port() : 0;
}

void MergeServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  const auto deadline = std::chrono::system_clock::now() + grace;
  if (jobs_ != nullptr) jobs_->Drain(grace);
  server_->Shutdown(deadline);
  server_->Wait();
}

MergeServer::~MergeServer() {
  if (server_ != nullptr) Shutdown(std::chrono::milliseconds(0));
  // The poller reads the job manager, which is destroyed before metrics_.
  if (metrics_ != nullptr) metrics_->StopWatching();
  server_.reset();
  // Validations still queued run against the registry and jobs.
  control_.reset();
}

}  // namespace mergeserve
