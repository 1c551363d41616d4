// SHA-256 of files and byte strings (OpenSSL EVP), hex encoded.
#ifndef MERGESERVE_BASE_SHA256_H_
#define MERGESERVE_BASE_SHA256_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mergeserve {

// Incremental hashing (RAII over the OpenSSL context).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size);
  // Lower-case hex digest; the object must not be updated afterwards.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string Sha256Hex(absl::string_view bytes);
// Streams the file in blocks (no mmap, so RSS stays flat).
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_SHA256_H_
