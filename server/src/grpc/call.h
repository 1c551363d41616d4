// How a handler starts: UnaryCall authorizes the caller (grpc/authorizer),
// and finishes the call through one path that converts the status, records
// the audit entry and, for slow work, runs the body off gRPC's callback
// threads on the bounded control executor.
#ifndef MERGESERVE_GRPC_CALL_H_
#define MERGESERVE_GRPC_CALL_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "grpc/authorizer.h"
#include "grpc/status_util.h"
#include "mergeserve/base/background_executor.h"

namespace mergeserve {

// What a call gets when the control pool's backlog is full.
inline absl::Status ControlBusy() {
  return absl::ResourceExhaustedError(
      "the server is busy validating other requests; try again later");
}

class UnaryCall {
 public:
  UnaryCall(grpc::CallbackServerContext* ctx, Authorizer& auth,
            const std::string& method, std::string resource)
      : reactor_(ctx->DefaultReactor()),
        auth_(&auth),
        resource_(std::move(resource)) {
    auto caller = auth.Authorize(ctx, method);
    if (caller.ok()) {
      caller_ = *caller;
    } else {
      status_ = caller.status();
    }
  }

  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }
  const Caller& caller() const { return caller_; }
  // The call's reactor (DefaultReactor() may be taken only once per call).
  grpc::ServerUnaryReactor* reactor() const { return reactor_; }
  const std::string& tenant() const { return caller_.tenant(); }
  void set_resource(std::string r) { resource_ = std::move(r); }

  // Ends the call with `status` (audited when it mutated or was denied; a
  // call refused by Authorize was audited there).
  grpc::ServerUnaryReactor* Finish(const absl::Status& status) {
    if (caller_.policy != nullptr) auth_->Finished(caller_, resource_, status);
    reactor_->Finish(ToGrpcStatus(status));
    return reactor_;
  }
  // Runs `body` on `control` and finishes with its status; a full control
  // queue is RESOURCE_EXHAUSTED.
  grpc::ServerUnaryReactor* Offload(BackgroundExecutor& control,
                                    std::function<absl::Status()> body) {
    UnaryCall self = *this;
    const bool queued = control.TrySubmit(
        [self, body = std::move(body)]() mutable { self.Finish(body()); });
    if (!queued) return Finish(ControlBusy());
    return reactor_;
  }

 private:
  grpc::ServerUnaryReactor* reactor_;
  Authorizer* auth_;
  std::string resource_;
  Caller caller_;
  absl::Status status_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_CALL_H_
