#include "mergeserve/engine/hub_cache.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace mergeserve {
namespace fs = std::filesystem;

bool LooksLikeHubId(const std::string& ref) {
  if (ref.empty() || ref[0] == '.' || ref[0] == '/' || ref[0] == '~') {
    return false;
  }
  const std::string id = ref.substr(0, ref.find('@'));
  const size_t slash = id.find('/');
  return slash != std::string::npos && slash > 0 && slash + 1 < id.size() &&
         id.find('/', slash + 1) == std::string::npos &&
         id.find("..") == std::string::npos;
}

std::string HubCacheDir() {
  if (const char* c = std::getenv("HF_HUB_CACHE"); c != nullptr && *c) return c;
  if (const char* h = std::getenv("HF_HOME"); h != nullptr && *h) {
    return (fs::path(h) / "hub").string();
  }
  const char* home = std::getenv("HOME");
  return (fs::path(home != nullptr ? home : "/") / ".cache" / "huggingface" /
          "hub")
      .string();
}

absl::StatusOr<std::string> FindInHubCache(const std::string& ref,
                                           const std::string& cache_dir) {
  const size_t at = ref.find('@');
  const std::string id = ref.substr(0, at);
  const std::string rev = at == std::string::npos ? "" : ref.substr(at + 1);
  const fs::path repo = fs::path(cache_dir) /
                        ("models--" + absl::StrReplaceAll(id, {{"/", "--"}}));
  const fs::path snapshots = repo / "snapshots";
  auto not_found = [&](const std::string& why) {
    return absl::NotFoundError(absl::StrCat(
        "model '", ref, "': not a folder, and ", why, " (Hugging Face cache ",
        cache_dir, "; set HF_HUB_CACHE or HF_HOME)"));
  };
  std::error_code ec;
  if (!fs::is_directory(snapshots, ec)) {
    return not_found(
        absl::StrCat("no ", repo.filename().string(), " in the cache"));
  }
  auto snapshot = [&](const std::string& commit) -> std::optional<std::string> {
    if (commit.empty() || commit.find('/') != std::string::npos ||
        commit.find("..") != std::string::npos) {
      return std::nullopt;
    }
    const fs::path p = snapshots / commit;
    if (fs::is_directory(p, ec)) return p.string();
    return std::nullopt;
  };
  auto via_ref = [&](const std::string& name) -> std::optional<std::string> {
    if (name.find("..") != std::string::npos) return std::nullopt;
    std::ifstream in(repo / "refs" / name);
    std::string commit;
    if (!(in >> commit)) return std::nullopt;
    return snapshot(std::string(absl::StripAsciiWhitespace(commit)));
  };
  if (!rev.empty()) {
    if (auto p = via_ref(rev)) return *p;
    if (auto p = snapshot(rev)) return *p;
    return not_found(absl::StrCat("revision '", rev, "' is not in the cache"));
  }
  if (auto p = via_ref("main")) return *p;
  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(snapshots, ec)) {
    if (e.is_directory()) all.push_back(e.path().string());
  }
  if (all.size() == 1) return all[0];
  return not_found(absl::StrCat(
      all.empty() ? "it has no snapshot" : "it has several snapshots",
      " and no refs/main; name one as ", id, "@REVISION"));
}

}  // namespace mergeserve
