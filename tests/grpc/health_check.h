// grpc.health.v1.Health/Check without generated stubs: the request is empty
// and the response's field 1 is the status (1 SERVING, 2 NOT_SERVING).
#ifndef MERGESERVE_TESTS_GRPC_HEALTH_CHECK_H_
#define MERGESERVE_TESTS_GRPC_HEALTH_CHECK_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <future>
#include <memory>
#include <string>

namespace mergeserve::testing {

// Returns the serving status, or -1 if the call failed.
inline int HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext ctx;
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                    &request, &response,
                    [&](grpc::Status s) { done.set_value(s); });
  if (!done.get_future().get().ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const auto& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes.size() == 2 && bytes[0] == '\x08' ? bytes[1] : 0;
}

}  // namespace mergeserve::testing

#endif  // MERGESERVE_TESTS_GRPC_HEALTH_CHECK_H_
