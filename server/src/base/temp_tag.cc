#include "mergeserve/base/temp_tag.h"

#include <cctype>
#include <mutex>

namespace mergeserve {
namespace {

std::mutex& Mu() {
  static std::mutex mu;
  return mu;
}
std::string& Tag() {
  static std::string tag;
  return tag;
}

}  // namespace

std::string TempTagFor(const std::string& replica) {
  std::string clean;
  for (char c : replica) {
    clean += std::isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                     c == '_' || c == '-'
                 ? c
                 : '_';
  }
  return clean.empty() ? "" : "@" + clean + "@";
}

void SetTempTag(const std::string& replica) {
  const std::string tag = TempTagFor(replica);
  std::lock_guard<std::mutex> lock(Mu());
  Tag() = tag;
}

std::string TempTag() {
  std::lock_guard<std::mutex> lock(Mu());
  return Tag();
}

}  // namespace mergeserve
