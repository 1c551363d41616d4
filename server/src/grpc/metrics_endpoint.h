// A small HTTP/1.1 server for Prometheus's GET /metrics, in place of
// prometheus-cpp's Exposer. The Exposer runs civetweb, whose worker threads
// get a fixed 100 KB stack; with OpenBLAS and LibTorch loaded their static
// TLS leaves too little of it and glibc refuses to start the threads. This
// one serves from one thread with the default stack, one connection at a
// time (a scrape is one short request), with read and write timeouts so a
// stalled client cannot hold it long.
#ifndef MERGESERVE_GRPC_METRICS_ENDPOINT_H_
#define MERGESERVE_GRPC_METRICS_ENDPOINT_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace mergeserve {

class MetricsEndpoint {
 public:
  // Serves `body()` (the text exposition format) at /metrics on `listen`
  // ("host:port", "[v6]:port"; port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& listen, std::function<std::string()> body);
  // Stops accepting and joins the thread.
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  void Serve();
  void Answer(int fd);

  std::function<std::string()> body_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe: written to stop Serve()
  int port_ = 0;
  std::thread thread_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_METRICS_ENDPOINT_H_
