#include "engine/aten_module.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"

namespace mergeserve {
namespace {

constexpr char kModuleName[] = "libmergeserve_aten.so";

// Separate locks: the module's initialisers register under `TablesMu` while
// the loader holds `LoadMu`.
absl::Mutex& TablesMu() {
  static auto* mu = new absl::Mutex;
  return *mu;
}
std::map<std::string, const void*>& Tables() {
  static auto* tables = new std::map<std::string, const void*>;
  return *tables;
}

absl::Mutex& LoadMu() {
  static auto* mu = new absl::Mutex;
  return *mu;
}
struct LoadState {
  bool tried = false;
  std::string error;  // why the last dlopen failed
};
LoadState& State() {
  static auto* state = new LoadState;
  return *state;
}

std::string ExecutableDir() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, n);
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool Exists(const std::string& path) { return access(path.c_str(), R_OK) == 0; }

// The places AtenModulePath looks, in order.
std::vector<std::string> ModuleCandidates() {
  if (const char* env = std::getenv("MERGESERVE_ATEN_MODULE");
      env != nullptr && *env != '\0') {
    return {env};
  }
  const std::string dir = ExecutableDir();
  return {absl::StrCat(dir, "/", kModuleName),
          absl::StrCat(dir, "/../lib/mergeserve/", kModuleName)};
}

}  // namespace

void RegisterAtenTable(const char* layer, const void* table) {
  absl::MutexLock lock(&TablesMu());
  Tables()[layer] = table;
}

const void* LoadedAtenTable(const char* layer) {
  absl::MutexLock lock(&TablesMu());
  auto it = Tables().find(layer);
  return it == Tables().end() ? nullptr : it->second;
}

std::string AtenModulePath() {
  const std::vector<std::string> candidates = ModuleCandidates();
  for (const std::string& path : candidates) {
    if (Exists(path)) return path;
  }
  return candidates.front();
}

absl::StatusOr<const void*> AtenTable(const char* layer,
                                      const std::string& what) {
  if (const void* table = LoadedAtenTable(layer)) return table;
  const std::string path = AtenModulePath();
  {
    absl::MutexLock lock(&LoadMu());
    LoadState& state = State();
    if (LoadedAtenTable(layer) == nullptr && !state.tried) {
      // RTLD_NOW: a symbol the module lacks fails here, not mid-merge.
      // Never unloaded: its tables and objects live as long as the process.
      if (dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL) == nullptr) {
        const char* err = dlerror();
        state.error = err != nullptr ? err : "unknown error";
      }
      state.tried = true;
    }
    if (const void* table = LoadedAtenTable(layer)) return table;
    if (!Exists(path)) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, " runs on LibTorch, but its module is not at ",
          absl::StrJoin(ModuleCandidates(), " or "),
          "; set MERGESERVE_ATEN_MODULE to libmergeserve_aten.so's path"));
    }
    // The file is there: a dlopen error (a LibTorch library missing, or a
    // module from another build) that another path would not fix.
    return absl::FailedPreconditionError(absl::StrCat(
        what, " runs on LibTorch, but its module ", path,
        " could not be loaded: ",
        state.error.empty() ? "it registered no table" : state.error));
  }
}

}  // namespace mergeserve
