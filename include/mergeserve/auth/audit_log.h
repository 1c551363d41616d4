// The audit log: one JSON line for every mutating call and every denied
// call, with who (tenant, token id, peer), what (method, resource) and the
// outcome (gRPC code). Appended to a file with O_APPEND (one write per
// line, so concurrent writers never interleave) or written to stderr.
#ifndef MERGESERVE_AUTH_AUDIT_LOG_H_
#define MERGESERVE_AUTH_AUDIT_LOG_H_

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

struct AuditEntry {
  std::string tenant;
  std::string token_id;
  std::string peer;
  std::string method;    // e.g. "mergeserve.v1.MergeService/CreateMergeJob"
  std::string resource;  // e.g. "checkpoints/llama-base", "jobs/job-1a2b"
  std::string code;      // e.g. "OK", "PERMISSION_DENIED"
  std::string message;   // the error message (empty for OK)
};

class AuditLog {
 public:
  // path "-" (or empty): stderr.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(
      const std::string& path);
  ~AuditLog();

  void Record(const AuditEntry& entry);
  const std::string& path() const { return path_; }

 private:
  AuditLog() = default;
  std::string path_;
  int fd_ = -1;
  std::mutex mu_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_AUTH_AUDIT_LOG_H_
