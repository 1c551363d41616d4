#include "grpc/status_util.h"

#include <mutex>
#include <string>

#include "absl/strings/str_replace.h"
#include "mergeserve/base/errors.h"

namespace mergeserve {
namespace {

std::mutex g_mu;
std::string* g_data_dir = new std::string();

}  // namespace

void SetDataDirForMessages(const std::string& data_dir) {
  std::lock_guard<std::mutex> lock(g_mu);
  *g_data_dir = data_dir;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string message(status.message());
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_data_dir->empty()) {
      message = absl::StrReplaceAll(message, {{*g_data_dir, "<data>"}});
    }
  }
  message = Abbreviate(message, kMaxErrorMessageBytes);
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message);
}

}  // namespace mergeserve
