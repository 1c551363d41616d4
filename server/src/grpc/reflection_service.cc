#include "grpc/reflection_service.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <set>

#include "grpc/status_util.h"

namespace mergeserve {
namespace {

namespace rv = grpc::reflection::v1alpha;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;
using google::protobuf::FileDescriptorProto;

// The file and everything it imports, each once.
void AddFile(const FileDescriptor* f, std::set<std::string>* seen,
             rv::FileDescriptorResponse* out) {
  if (f == nullptr || !seen->insert(f->name()).second) return;
  FileDescriptorProto proto;
  f->CopyTo(&proto);
  out->add_file_descriptor_proto(proto.SerializeAsString());
  for (int i = 0; i < f->dependency_count(); ++i) {
    AddFile(f->dependency(i), seen, out);
  }
}

void SetError(rv::ServerReflectionResponse* r, grpc::StatusCode code,
              const std::string& msg) {
  r->mutable_error_response()->set_error_code(code);
  r->mutable_error_response()->set_error_message(msg);
}

class ReflectionReactor
    : public grpc::ServerBidiReactor<rv::ServerReflectionRequest,
                                     rv::ServerReflectionResponse> {
 public:
  ReflectionReactor(const ReflectionServiceImpl& service, Authorizer& auth,
                    Caller caller)
      : service_(service), auth_(auth), caller_(std::move(caller)) {
    StartRead(&request_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    response_ = service_.Answer(request_);
    StartWrite(&response_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream broken"));
      return;
    }
    StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  const ReflectionServiceImpl& service_;
  Authorizer& auth_;
  Caller caller_;
  rv::ServerReflectionRequest request_;
  rv::ServerReflectionResponse response_;
};

class RefusedReflection
    : public grpc::ServerBidiReactor<rv::ServerReflectionRequest,
                                     rv::ServerReflectionResponse> {
 public:
  explicit RefusedReflection(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
  void OnDone() override { delete this; }
};

}  // namespace

rv::ServerReflectionResponse ReflectionServiceImpl::Answer(
    const rv::ServerReflectionRequest& req) const {
  rv::ServerReflectionResponse r;
  r.set_valid_host(req.host());
  *r.mutable_original_request() = req;
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  std::set<std::string> seen;
  switch (req.message_request_case()) {
    case rv::ServerReflectionRequest::kListServices:
      for (const std::string& s : services_) {
        r.mutable_list_services_response()->add_service()->set_name(s);
      }
      break;
    case rv::ServerReflectionRequest::kFileByFilename: {
      const FileDescriptor* f = pool->FindFileByName(req.file_by_filename());
      if (f == nullptr) {
        SetError(&r, grpc::StatusCode::NOT_FOUND, "file not found");
      } else {
        AddFile(f, &seen, r.mutable_file_descriptor_response());
      }
      break;
    }
    case rv::ServerReflectionRequest::kFileContainingSymbol: {
      const FileDescriptor* f =
          pool->FindFileContainingSymbol(req.file_containing_symbol());
      if (f == nullptr) {
        SetError(&r, grpc::StatusCode::NOT_FOUND, "symbol not found");
      } else {
        AddFile(f, &seen, r.mutable_file_descriptor_response());
      }
      break;
    }
    default:
      // mergeserve's protos declare no extensions.
      SetError(&r, grpc::StatusCode::UNIMPLEMENTED,
               "extensions are not served");
  }
  return r;
}

grpc::ServerBidiReactor<rv::ServerReflectionRequest,
                        rv::ServerReflectionResponse>*
ReflectionServiceImpl::ServerReflectionInfo(grpc::CallbackServerContext* ctx) {
  auto caller = auth_.Authorize(
      ctx, "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
  if (!caller.ok()) return new RefusedReflection(caller.status());
  return new ReflectionReactor(*this, auth_, *caller);
}

}  // namespace mergeserve
