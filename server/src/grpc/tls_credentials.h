// The gRPC port's credentials: plaintext, TLS, or mutual TLS, from PEM
// files that are re-read when they change (cert-manager rotates them) with
// no restart.
#ifndef MERGESERVE_GRPC_TLS_CREDENTIALS_H_
#define MERGESERVE_GRPC_TLS_CREDENTIALS_H_

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

struct TlsFiles {
  std::string cert;          // server certificate chain (PEM); "" = plaintext
  std::string key;           // its private key (PEM)
  std::string client_ca;     // CA bundle: clients must present a certificate
                             // it signed (mutual TLS); "" = no client certs
  int refresh_seconds = 60;  // how often the files are checked for changes
};

// INVALID_ARGUMENT naming the file when one is missing, unreadable or not
// PEM (checked now, so a typo fails the start, not the first handshake).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const TlsFiles& files);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_TLS_CREDENTIALS_H_
