#include "grpc/merge_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "grpc/merge_service.h"
#include "grpc/registry_service.h"
#include "grpc/service_metrics.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

absl::StatusOr<std::unique_ptr<MergeServer>> MergeServer::Start(
    Options options) {
  std::unique_ptr<MergeServer> s(new MergeServer());
  MS_ASSIGN_OR_RETURN(s->metrics_,
                      ServiceMetrics::Create(options.metrics_listen));
  CheckpointRegistry::Options ro;
  ro.data_dir = options.data_dir;
  ro.allowed_roots = options.allowed_roots;
  MS_ASSIGN_OR_RETURN(s->registry_, CheckpointRegistry::Create(ro));
  s->registry_service_ = std::make_unique<RegistryServiceImpl>(*s->registry_);
  JobManager::Options jo;
  jo.data_dir = s->registry_->data_dir();
  jo.registry = s->registry_.get();
  jo.workers = options.workers;
  jo.queue_limit = options.queue_limit;
  jo.memory_budget = options.memory_budget;
  jo.cache_budget = options.cache_budget;
  jo.device = options.device;
  ServiceMetrics* metrics = s->metrics_.get();
  jo.on_finished = [metrics](const JobRecord& j) { metrics->RecordJob(j); };
  MS_ASSIGN_OR_RETURN(s->jobs_, JobManager::Create(jo));
  metrics->WatchJobs(s->jobs_.get());
  MergeServiceHooks hooks;
  hooks.on_bytes_streamed = [metrics](int64_t n) {
    metrics->AddBytesStreamed(n);
  };
  s->merge_service_ = std::make_unique<MergeServiceImpl>(*s->jobs_, hooks);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.RegisterService(s->registry_service_.get());
  builder.RegisterService(s->merge_service_.get());
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
  auto* health = s->server_->GetHealthCheckService();
  health->SetServingStatus(true);
  return s;
}

int MergeServer::metrics_port() const { return metrics_->port(); }

void MergeServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  server_->GetHealthCheckService()->SetServingStatus(false);
  const auto deadline = std::chrono::system_clock::now() + grace;
  jobs_->Drain(grace);
  server_->Shutdown(deadline);
  server_->Wait();
}

MergeServer::~MergeServer() {
  if (server_ != nullptr) Shutdown(std::chrono::milliseconds(0));
  // The poller reads the job manager, which is destroyed before metrics_.
  if (metrics_ != nullptr) metrics_->StopWatching();
}

}  // namespace mergeserve
