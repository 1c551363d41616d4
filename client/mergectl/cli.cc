#include "cli.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "mergectl/service_config.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/exit_codes.h"

namespace mergectl {

int ExitCode(const grpc::Status& s) {
  return mergeserve::ExitCodeFor(static_cast<int>(s.error_code()));
}

namespace {

// Adds the bearer token and the acting tenant to every call's metadata.
class IdentityInterceptor : public grpc::experimental::Interceptor {
 public:
  IdentityInterceptor(std::string token, std::string tenant)
      : token_(std::move(token)), tenant_(std::move(tenant)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::
                PRE_SEND_INITIAL_METADATA)) {
      auto* md = m->GetSendInitialMetadata();
      if (!token_.empty()) md->insert({"authorization", "Bearer " + token_});
      if (!tenant_.empty()) md->insert({"x-mergeserve-tenant", tenant_});
    }
    m->Proceed();
  }

 private:
  std::string token_, tenant_;
};

class IdentityFactory
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  IdentityFactory(std::string token, std::string tenant)
      : token_(std::move(token)), tenant_(std::move(tenant)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new IdentityInterceptor(token_, tenant_);
  }

 private:
  std::string token_, tenant_;
};

bool ReadPem(const std::string& path, const char* what, std::string* out) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "mergectl: cannot read %s %s\n", what, path.c_str());
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

std::shared_ptr<grpc::Channel> Connect(const Args& args) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (args.tls || !args.ca_cert.empty() || !args.cert.empty()) {
    grpc::SslCredentialsOptions o;
    if (!args.ca_cert.empty() &&
        !ReadPem(args.ca_cert, "CA certificate", &o.pem_root_certs)) {
      return nullptr;
    }
    if (!args.cert.empty() &&
        (!ReadPem(args.cert, "client certificate", &o.pem_cert_chain) ||
         !ReadPem(args.key, "client key", &o.pem_private_key))) {
      return nullptr;
    }
    creds = grpc::SslCredentials(o);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments ch_args;
  ch_args.SetMaxReceiveMessageSize(4 << 20);
  // Idempotent calls retry on UNAVAILABLE (a replica went away; behind a
  // Service or a list of addresses the retry reaches another one).
  ch_args.SetServiceConfigJSON(kServiceConfigJson);
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      std::make_unique<IdentityFactory>(args.token, args.tenant));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      args.server, creds, ch_args, std::move(interceptors));
}

int Fail(const grpc::Status& s, const std::string& server) {
  std::string msg = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    msg = "cannot reach mergeserve at " + server + " (" + msg +
          "; a TLS server needs --ca-cert or --tls)";
  } else if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    msg += " (mergectl --token or $MERGESERVE_TOKEN)";
  }
  std::fprintf(stderr, "mergectl: %s\n", msg.c_str());
  return ExitCode(s);
}

std::string HumanBytes(int64_t b) { return mergeserve::FormatBytes(b); }

int ReadConfigArg(const Args& args, const char* verb, std::string* yaml) {
  if (args.positional.size() != 2) {
    std::fprintf(stderr, "mergectl %s: expected CONFIG.yaml\n", verb);
    return 2;
  }
  std::ifstream in(args.positional[1]);
  if (!in) {
    std::fprintf(stderr, "mergectl: cannot read %s\n",
                 args.positional[1].c_str());
    return 3;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  *yaml = ss.str();
  return 0;
}

bool Interactive() { return isatty(2) != 0; }

}  // namespace mergectl
