// gRPC server reflection (grpc.reflection.v1alpha, what grpcurl and grpc_cli
// speak) behind the server's authentication: it describes the API to any
// authenticated caller and to nobody else. Answers from the descriptors
// compiled into the server.
#ifndef MERGESERVE_GRPC_REFLECTION_SERVICE_H_
#define MERGESERVE_GRPC_REFLECTION_SERVICE_H_

#include <string>
#include <vector>

#include "grpc/authorizer.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace mergeserve {

class ReflectionServiceImpl final
    : public grpc::reflection::v1alpha::ServerReflection::CallbackService {
 public:
  // `services`: the full names listed to clients.
  ReflectionServiceImpl(Authorizer& auth, std::vector<std::string> services)
      : auth_(auth), services_(std::move(services)) {}

  grpc::ServerBidiReactor<grpc::reflection::v1alpha::ServerReflectionRequest,
                          grpc::reflection::v1alpha::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* ctx) override;

  // The answer to one request (public for tests).
  grpc::reflection::v1alpha::ServerReflectionResponse Answer(
      const grpc::reflection::v1alpha::ServerReflectionRequest& req) const;

 private:
  Authorizer& auth_;
  std::vector<std::string> services_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_REFLECTION_SERVICE_H_
