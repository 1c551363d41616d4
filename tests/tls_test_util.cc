#include "tls_test_util.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace mergeserve::testing {
namespace {

void Run(const std::string& cmd) {
  const std::string quiet = cmd + " > /dev/null 2>&1";
  if (std::system(quiet.c_str()) != 0) {
    std::fprintf(stderr, "failed: %s\n", cmd.c_str());
    std::abort();
  }
}

// P-256 keys: fast to make, accepted by gRPC's TLS stack.
void NewKey(const std::string& key) {
  Run("openssl ecparam -name prime256v1 -genkey -noout -out " + key);
}

void NewCa(const std::string& dir, const std::string& name) {
  NewKey(dir + "/" + name + ".key");
  Run("openssl req -x509 -new -key " + dir + "/" + name + ".key -out " + dir +
      "/" + name + ".pem -days 2 -subj /CN=" + name);
}

void Issue(const std::string& dir, const std::string& ca,
           const std::string& ca_key, const std::string& cn,
           const std::string& ext, const std::string& cert,
           const std::string& key) {
  NewKey(key + ".new");
  Run("openssl req -new -key " + key + ".new -out " + cert +
      ".csr -subj /CN=" + cn);
  std::FILE* f = std::fopen((cert + ".ext").c_str(), "w");
  std::fputs(ext.c_str(), f);
  std::fclose(f);
  Run("openssl x509 -req -in " + cert + ".csr -CA " + ca + " -CAkey " + ca_key +
      " -CAcreateserial -out " + cert + ".new -days 2 -extfile " + cert +
      ".ext");
  // Rename into place so a watcher never sees a half-written file.
  std::filesystem::rename(key + ".new", key);
  std::filesystem::rename(cert + ".new", cert);
}

}  // namespace

void IssueServerCert(const std::string& dir, const std::string& ca,
                     const std::string& ca_key, const std::string& cert_out,
                     const std::string& key_out) {
  Issue(dir, ca, ca_key, "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n", cert_out, key_out);
}

TestPki MakeTestPki(const std::string& dir) {
  std::filesystem::create_directories(dir);
  TestPki p;
  p.dir = dir;
  NewCa(dir, "ca");
  NewCa(dir, "other_ca");
  p.ca = dir + "/ca.pem";
  p.ca_key = dir + "/ca.key";
  p.other_ca = dir + "/other_ca.pem";
  p.other_ca_key = dir + "/other_ca.key";
  p.server = dir + "/server.pem";
  p.server_key = dir + "/server.key";
  IssueServerCert(dir, p.ca, p.ca_key, p.server, p.server_key);
  p.client = dir + "/client.pem";
  p.client_key = dir + "/client.key";
  Issue(dir, p.ca, p.ca_key, "pipeline", "extendedKeyUsage=clientAuth\n",
        p.client, p.client_key);
  return p;
}

}  // namespace mergeserve::testing
