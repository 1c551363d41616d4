// The /metrics HTTP endpoint: what it answers to each request, its address
// errors, and that it serves with OpenBLAS and LibTorch loaded in the
// process (the reason it replaced prometheus-cpp's civetweb Exposer).
#include "grpc/metrics_endpoint.h"

#include <ATen/ATen.h>

#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::unique_ptr<MetricsEndpoint> StartLocal() {
  auto e = MetricsEndpoint::Start("127.0.0.1:0",
                                  [] { return std::string("up 1\n"); });
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? *std::move(e) : nullptr;
}

TEST(MetricsEndpointTest, ServesTheBodyAtMetricsAndNothingElse) {
  auto e = StartLocal();
  ASSERT_NE(e, nullptr);
  ASSERT_GT(e->port(), 0);
  const std::string ok = testing::HttpExchange(
      e->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_THAT(ok, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(ok, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(ok, HasSubstr("Content-Length: 5\r\n"));
  EXPECT_THAT(ok, EndsWith("\r\n\r\nup 1\n"));
  // A query string is ignored; HEAD has the headers only.
  EXPECT_THAT(
      testing::HttpExchange(e->port(), "GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
      EndsWith("up 1\n"));
  EXPECT_THAT(
      testing::HttpExchange(e->port(), "HEAD /metrics HTTP/1.1\r\n\r\n"),
      EndsWith("Connection: close\r\n\r\n"));
  EXPECT_THAT(testing::HttpExchange(e->port(), "GET / HTTP/1.1\r\n\r\n"),
              StartsWith("HTTP/1.1 404"));
  EXPECT_THAT(
      testing::HttpExchange(e->port(), "POST /metrics HTTP/1.1\r\n\r\n"),
      StartsWith("HTTP/1.1 405"));
  EXPECT_THAT(testing::HttpExchange(e->port(), "nonsense\r\n\r\n"),
              StartsWith("HTTP/1.1 400"));
  EXPECT_THAT(testing::HttpExchange(e->port(), std::string(9000, 'a')),
              StartsWith("HTTP/1.1 431"));
  // A client that leaves mid-request does not stop the next scrape.
  EXPECT_EQ(testing::HttpExchange(e->port(), "GET /met"), "");
  EXPECT_THAT(testing::HttpExchange(e->port(), "GET /metrics HTTP/1.1\r\n\r\n"),
              EndsWith("up 1\n"));
}

TEST(MetricsEndpointTest, AddressErrorsSayWhatIsWrong) {
  auto none = MetricsEndpoint::Start("localhost", [] { return ""; });
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("HOST:PORT"));
  auto first = StartLocal();
  ASSERT_NE(first, nullptr);
  auto taken = MetricsEndpoint::Start(
      "127.0.0.1:" + std::to_string(first->port()), [] { return ""; });
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(taken.status().message()),
              HasSubstr("cannot serve metrics on 127.0.0.1:"));
}

TEST(MetricsEndpointTest, ServesWithOpenBlasDoingTheProcessesGemms) {
  // LibTorch's GEMMs go to libblas.so.3, which the build's dependencies
  // point at OpenBLAS (scripts/install_deps.sh): a matmul maps it.
  const at::Tensor a = at::ones({256, 256});
  EXPECT_FLOAT_EQ(at::mm(a, a)[0][0].item<float>(), 256.f);
  std::ifstream maps("/proc/self/maps");
  std::stringstream text;
  text << maps.rdbuf();
  ASSERT_THAT(text.str(), HasSubstr("openblas"))
      << "libblas.so.3 is not OpenBLAS; run scripts/install_deps.sh";
  auto e = StartLocal();
  ASSERT_NE(e, nullptr);
  EXPECT_THAT(testing::HttpExchange(e->port(), "GET /metrics HTTP/1.1\r\n\r\n"),
              EndsWith("up 1\n"));
}

}  // namespace
}  // namespace mergeserve
