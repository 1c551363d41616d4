// The gRPC server: the mergeserve.v1 services, grpc.health.v1.Health and
// server reflection on one port.
#ifndef MERGESERVE_GRPC_MERGE_SERVER_H_
#define MERGESERVE_GRPC_MERGE_SERVER_H_

#include <grpcpp/server.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/registry/checkpoint_registry.h"

namespace mergeserve {

class RegistryServiceImpl;
class MergeServiceImpl;
class ServiceMetrics;

class MergeServer {
 public:
  struct Options {
    std::string listen = "0.0.0.0:50051";  // port 0 picks a free one
    std::string data_dir = "mergeserve-data";
    std::vector<std::string> allowed_roots;
    // Largest request message (uploads stream in chunks far below this).
    int max_message_bytes = 8 << 20;
    int workers = 1;             // merges running at once
    int queue_limit = 16;        // merges waiting; more: RESOURCE_EXHAUSTED
    int64_t memory_budget = 0;   // shared by running merges; 0: unlimited
    std::string metrics_listen;  // "host:port" for /metrics; "" = off
    int64_t cache_budget = int64_t{1} << 30;
    // Where data-aware merges and evaluation run programs ("cuda:0").
    std::string device = "cpu";
  };

  // Loads the registry, then starts serving (health SERVING).
  static absl::StatusOr<std::unique_ptr<MergeServer>> Start(Options options);
  ~MergeServer();

  int port() const { return port_; }
  // Port of the Prometheus endpoint (0 when off).
  int metrics_port() const;
  CheckpointRegistry& registry() { return *registry_; }
  JobManager& jobs() { return *jobs_; }
  // Health goes NOT_SERVING, no new jobs are taken, running merges and
  // calls get `grace` to finish (then merges are cancelled).
  void Shutdown(std::chrono::milliseconds grace);

 private:
  MergeServer() = default;
  std::unique_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<CheckpointRegistry> registry_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<RegistryServiceImpl> registry_service_;
  std::unique_ptr<MergeServiceImpl> merge_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_MERGE_SERVER_H_
