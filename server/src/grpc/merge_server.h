// The gRPC server: the mergeserve.v1 services, grpc.health.v1.Health and
// (authenticated) server reflection on one port, in one of three modes:
//   development  no --auth token: every caller is an admin of tenant
//                "default"; loopback only
//   secure       --auth token with --tls-cert/--tls-key (optionally mutual
//                TLS): any address
//   insecure     anything else off loopback, only with --insecure
// A database that fails its integrity check starts the server degraded:
// health NOT_SERVING, every other call UNAVAILABLE naming the file.
#ifndef MERGESERVE_GRPC_MERGE_SERVER_H_
#define MERGESERVE_GRPC_MERGE_SERVER_H_

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpc/tls_credentials.h"
#include "grpc/upload_reactor.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {

class AdminServiceImpl;
class Authorizer;
class AuditLog;
class BackgroundExecutor;
class MergeServiceImpl;
class ReflectionServiceImpl;
class RegistryServiceImpl;
class ServiceMetrics;
class TokenStore;

class MergeServer {
 public:
  struct Options {
    // "" = 127.0.0.1:50051 in development mode, 0.0.0.0:50051 with tokens.
    // Port 0 picks a free one.
    std::string listen;
    std::string data_dir = "mergeserve-data";
    // The store: "" = sqlite DATA_DIR/mergeserve.db, or a URL OpenDatabase
    // takes (postgresql://... for several replicas).
    std::string database;
    DatabaseOpenOptions database_options;
    // This process among replicas sharing the database (job records show
    // it); "" = the host name.
    std::string replica_id;
    int64_t lease_ms = 30000;  // a claimed job's lease, renewed by heartbeats
    int max_attempts = 3;      // lost leases before a job fails
    std::vector<std::string> allowed_roots;
    // Largest request message (uploads stream in chunks far below this).
    int max_message_bytes = 8 << 20;
    int workers = 1;             // long work items running at once
    int queue_limit = 16;        // items waiting; more: RESOURCE_EXHAUSTED
    int64_t memory_budget = 0;   // shared by running work; 0: unlimited
    std::string metrics_listen;  // "host:port" for /metrics; "" = off
    int64_t cache_budget = int64_t{1} << 30;
    // Where data-aware merges and evaluation run programs ("cuda:0").
    std::string device = "cpu";
    // Identity.
    bool auth_tokens = false;  // --auth token
    TlsFiles tls;
    bool insecure = false;  // allow plaintext or no auth off loopback
    std::string audit_log;  // "" = DATA_DIR/audit.log, "-" = stderr
    // Limits.
    Quota default_quota;
    UploadLimits uploads;
    ConfigLimits config_limits;
    int64_t job_retention_ms = int64_t{30} * 24 * 3600 * 1000;  // 0: forever
  };

  // Validates the options, opens the database and applies its migrations,
  // then returns a one-line description (serve --check).
  static absl::StatusOr<std::string> Check(Options options);
  // Loads the registry, then starts serving (health SERVING).
  static absl::StatusOr<std::unique_ptr<MergeServer>> Start(Options options);
  ~MergeServer();

  int port() const { return port_; }
  // Port of the Prometheus endpoint (0 when off).
  int metrics_port() const;
  // The address it listens on and the mode, for the start-up line.
  const std::string& listen() const { return listen_; }
  const std::string& mode() const { return mode_; }
  // Empty when serving; the reason when degraded (NOT_SERVING).
  const std::string& degraded() const { return degraded_; }
  CheckpointRegistry& registry() { return *registry_; }
  JobManager& jobs() { return *jobs_; }
  const std::string& data_dir() const { return data_dir_; }
  // The store (no secrets) and this replica's id.
  const std::string& database() const { return database_; }
  const std::string& replica_id() const { return replica_id_; }
  // Health goes NOT_SERVING, no new work starts, running work and calls
  // get `grace` to finish (then work is cancelled).
  void Shutdown(std::chrono::milliseconds grace);

 private:
  MergeServer();
  absl::Status StartDegraded(const Options& options,
                             std::shared_ptr<grpc::ServerCredentials> creds,
                             const std::string& why);

  // The checks Start and Check share: mode, credentials, data dir, store.
  absl::Status Prepare(Options& options);
  std::string listen_, mode_, degraded_, data_dir_, database_, replica_id_;
  std::shared_ptr<grpc::ServerCredentials> creds_;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::shared_ptr<Database> db_;
  std::unique_ptr<TokenStore> tokens_;
  std::unique_ptr<TenantQuotas> quotas_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<CheckpointRegistry> registry_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<UploadGuard> uploads_;
  std::unique_ptr<BackgroundExecutor> control_;
  std::unique_ptr<RegistryServiceImpl> registry_service_;
  std::unique_ptr<MergeServiceImpl> merge_service_;
  std::unique_ptr<AdminServiceImpl> admin_service_;
  std::unique_ptr<ReflectionServiceImpl> reflection_service_;
  std::unique_ptr<grpc::CallbackGenericService> unavailable_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Whether a listen address ("host:port") is on loopback.
bool IsLoopbackAddress(const std::string& listen);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_MERGE_SERVER_H_
