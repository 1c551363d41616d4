// Prometheus metrics of the service (prometheus-cpp), served on their own
// port: RPCs by method and code (recorded by a server interceptor, so every
// RPC is counted in one place), job durations, queue depth, bytes streamed,
// task-vector cache use and merge throughput.
#ifndef MERGESERVE_GRPC_SERVICE_METRICS_H_
#define MERGESERVE_GRPC_SERVICE_METRICS_H_

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "grpc/metrics_endpoint.h"
#include "mergeserve/jobs/job_manager.h"

namespace mergeserve {

class ServiceMetrics {
 public:
  // listen: "host:port" for /metrics ("" = not exposed; still counted).
  static absl::StatusOr<std::unique_ptr<ServiceMetrics>> Create(
      const std::string& listen);
  ~ServiceMetrics();

  void RecordRpc(const std::string& method, int code);
  void RecordJob(const JobRecord& job);
  void AddBytesStreamed(int64_t bytes);
  // Polls queue depth, running jobs and memory in use until StopWatching()
  // (which must run before `jobs` is destroyed).
  void WatchJobs(JobManager* jobs);
  void StopWatching();
  // An interceptor factory that feeds RecordRpc.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  InterceptorFactory();
  int port() const;

 private:
  ServiceMetrics() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<MetricsEndpoint> endpoint_;
  prometheus::Family<prometheus::Counter>* rpcs_ = nullptr;
  prometheus::Family<prometheus::Histogram>* job_seconds_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* memory_in_use_ = nullptr;
  prometheus::Counter* bytes_streamed_ = nullptr;
  prometheus::Counter* merged_input_bytes_ = nullptr;
  prometheus::Gauge* throughput_ = nullptr;
  prometheus::Gauge* cache_hits_ = nullptr;
  prometheus::Gauge* cache_misses_ = nullptr;
  prometheus::Gauge* cache_bytes_ = nullptr;
  prometheus::Gauge* stats_hits_ = nullptr;
  prometheus::Gauge* claimed_ = nullptr;
  prometheus::Gauge* leases_lost_ = nullptr;
  prometheus::Gauge* handed_back_ = nullptr;
  prometheus::Gauge* stats_misses_ = nullptr;
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_SERVICE_METRICS_H_
