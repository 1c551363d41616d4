// Real certificates for tests, made with the openssl command line: a CA, a
// server certificate for localhost / 127.0.0.1 signed by it, a client
// certificate (mutual TLS), and a second, unrelated CA.
#ifndef MERGESERVE_TESTS_TLS_TEST_UTIL_H_
#define MERGESERVE_TESTS_TLS_TEST_UTIL_H_

#include <fstream>
#include <sstream>
#include <string>

namespace mergeserve::testing {

struct TestPki {
  std::string dir;
  std::string ca, ca_key;              // the CA the server's cert chains to
  std::string server, server_key;      // CN=localhost, SAN localhost/127.0.0.1
  std::string client, client_key;      // for mutual TLS
  std::string other_ca, other_ca_key;  // trusted by no one
};

// Makes every file under `dir`; aborts the test binary if openssl fails.
TestPki MakeTestPki(const std::string& dir);
// Issues a new server certificate signed by (ca, ca_key) into
// (cert_out, key_out), written in place (a rotation).
void IssueServerCert(const std::string& dir, const std::string& ca,
                     const std::string& ca_key, const std::string& cert_out,
                     const std::string& key_out);

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace mergeserve::testing

#endif  // MERGESERVE_TESTS_TLS_TEST_UTIL_H_
