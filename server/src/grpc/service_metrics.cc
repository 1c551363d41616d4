#include "grpc/service_metrics.h"

#include <prometheus/text_serializer.h>

#include <sstream>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

const char* CodeName(int code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

const char* StateName(JobState s) {
  switch (s) {
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
    default:
      return "other";
  }
}

// Counts each RPC once, when its status is sent.
class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(ServiceMetrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)) {}
  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->RecordRpc(method_, methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  ServiceMetrics* metrics_;
  std::string method_;
};

class MetricsInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(ServiceMetrics* m) : metrics_(m) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_, info->method());
  }

 private:
  ServiceMetrics* metrics_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServiceMetrics>> ServiceMetrics::Create(
    const std::string& listen) {
  std::unique_ptr<ServiceMetrics> m(new ServiceMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  auto& reg = *m->registry_;
  m->rpcs_ = &prometheus::BuildCounter()
                  .Name("mergeserve_rpc_requests_total")
                  .Help("gRPC requests by method and status code")
                  .Register(reg);
  m->job_seconds_ = &prometheus::BuildHistogram()
                         .Name("mergeserve_job_duration_seconds")
                         .Help("Merge job run time by final state")
                         .Register(reg);
  m->queue_depth_ = &prometheus::BuildGauge()
                         .Name("mergeserve_queue_depth")
                         .Help("Merge jobs waiting in the queue")
                         .Register(reg)
                         .Add({});
  m->running_ = &prometheus::BuildGauge()
                     .Name("mergeserve_jobs_running")
                     .Help("Merge jobs running now")
                     .Register(reg)
                     .Add({});
  m->memory_in_use_ = &prometheus::BuildGauge()
                           .Name("mergeserve_memory_budget_in_use_bytes")
                           .Help("Memory reserved by running merges")
                           .Register(reg)
                           .Add({});
  m->bytes_streamed_ = &prometheus::BuildCounter()
                            .Name("mergeserve_bytes_streamed_total")
                            .Help("Result bytes sent by DownloadMergeResult")
                            .Register(reg)
                            .Add({});
  m->merged_input_bytes_ =
      &prometheus::BuildCounter()
           .Name("mergeserve_merged_input_bytes_total")
           .Help("Checkpoint bytes read by finished merges")
           .Register(reg)
           .Add({});
  m->throughput_ =
      &prometheus::BuildGauge()
           .Name("mergeserve_merge_throughput_bytes_per_second")
           .Help("Input bytes per second of the last finished merge")
           .Register(reg)
           .Add({});
  // Mirrors of the cache's own counters, refreshed by the poller.
  m->cache_hits_ = &prometheus::BuildGauge()
                        .Name("mergeserve_cache_hits_total")
                        .Help("Task-vector cache hits since start")
                        .Register(reg)
                        .Add({});
  m->cache_misses_ = &prometheus::BuildGauge()
                          .Name("mergeserve_cache_misses_total")
                          .Help("Task-vector cache misses since start")
                          .Register(reg)
                          .Add({});
  m->cache_bytes_ = &prometheus::BuildGauge()
                         .Name("mergeserve_cache_bytes")
                         .Help("Bytes held by the task-vector cache")
                         .Register(reg)
                         .Add({});
  auto& stats = prometheus::BuildGauge()
                    .Name("mergeserve_statistics_total")
                    .Help(
                        "Fisher/Gram/RI statistics found in the cache "
                        "(result=hit) or computed (result=miss)")
                    .Register(reg);
  m->stats_hits_ = &stats.Add({{"result", "hit"}});
  m->stats_misses_ = &stats.Add({{"result", "miss"}});
  auto& replica = prometheus::BuildGauge()
                      .Name("mergeserve_replica_jobs_total")
                      .Help(
                          "Jobs this replica claimed from the shared queue "
                          "(event=claimed), lost to another replica when its "
                          "lease lapsed (event=lease_lost) or handed back "
                          "while draining (event=handed_back), since start")
                      .Register(reg);
  m->claimed_ = &replica.Add({{"event", "claimed"}});
  m->leases_lost_ = &replica.Add({{"event", "lease_lost"}});
  m->handed_back_ = &replica.Add({{"event", "handed_back"}});
  if (!listen.empty()) {
    std::weak_ptr<prometheus::Registry> registry = m->registry_;
    MS_ASSIGN_OR_RETURN(
        m->endpoint_, MetricsEndpoint::Start(listen, [registry] {
          std::ostringstream out;
          if (auto r = registry.lock()) {
            prometheus::TextSerializer().Serialize(out, r->Collect());
          }
          return out.str();
        }));
  }
  return m;
}

ServiceMetrics::~ServiceMetrics() { StopWatching(); }

void ServiceMetrics::StopWatching() {
  stop_ = true;
  if (poller_.joinable()) poller_.join();
}

int ServiceMetrics::port() const { return endpoint_ ? endpoint_->port() : 0; }

void ServiceMetrics::RecordRpc(const std::string& method, int code) {
  rpcs_->Add({{"method", method}, {"code", CodeName(code)}}).Increment();
}

void ServiceMetrics::RecordJob(const JobRecord& job) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
  const double seconds =
      job.start_ms > 0 ? (job.end_ms - job.start_ms) / 1000.0 : 0.0;
  job_seconds_->Add({{"state", StateName(job.state)}}, kBuckets)
      .Observe(seconds);
  if (job.state == JobState::kSucceeded) {
    merged_input_bytes_->Increment(static_cast<double>(job.bytes_read));
    if (job.seconds > 0) throughput_->Set(job.bytes_read / job.seconds);
  }
}

void ServiceMetrics::AddBytesStreamed(int64_t bytes) {
  bytes_streamed_->Increment(static_cast<double>(bytes));
}

void ServiceMetrics::WatchJobs(JobManager* jobs) {
  poller_ = std::thread([this, jobs] {
    while (!stop_) {
      const JobStats s = jobs->stats();
      queue_depth_->Set(static_cast<double>(s.queued));
      running_->Set(static_cast<double>(s.running));
      memory_in_use_->Set(static_cast<double>(s.memory_in_use));
      const CacheStats c = jobs->cache_stats();
      cache_hits_->Set(static_cast<double>(c.hits));
      cache_misses_->Set(static_cast<double>(c.misses));
      cache_bytes_->Set(static_cast<double>(c.bytes));
      stats_hits_->Set(static_cast<double>(jobs->stats_counters().hits));
      stats_misses_->Set(static_cast<double>(jobs->stats_counters().misses));
      const ReplicaCounters& r = jobs->replica_counters();
      claimed_->Set(static_cast<double>(r.claimed.load()));
      leases_lost_->Set(static_cast<double>(r.leases_lost.load()));
      handed_back_->Set(static_cast<double>(r.handed_back.load()));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
ServiceMetrics::InterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

}  // namespace mergeserve
