#include "mergeserve/auth/audit_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/log.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(
    const std::string& path) {
  std::unique_ptr<AuditLog> log(new AuditLog());
  log->path_ = path.empty() ? "-" : path;
  if (log->path_ != "-") {
    log->fd_ =
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (log->fd_ < 0) {
      return ErrnoStatus(errno, absl::StrCat("cannot open audit log ", path));
    }
  }
  return log;
}

AuditLog::~AuditLog() {
  if (fd_ >= 0) ::close(fd_);
}

void AuditLog::Record(const AuditEntry& e) {
  nlohmann::ordered_json j;
  j["ts"] = TimestampNow();
  j["tenant"] = e.tenant;
  j["token_id"] = e.token_id;
  j["peer"] = e.peer;
  j["method"] = e.method;
  j["resource"] = e.resource;
  j["code"] = e.code;
  if (!e.message.empty()) j["message"] = e.message;
  // Invalid UTF-8 in a client-chosen name must not throw.
  const std::string line =
      j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  const int fd = fd_ >= 0 ? fd_ : 2;
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t w = ::write(fd, line.data() + done, line.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // the audit log must never fail a call
    done += static_cast<size_t>(w);
  }
}

}  // namespace mergeserve
