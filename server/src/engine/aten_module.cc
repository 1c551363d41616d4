#include "engine/aten_module.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
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
  if (const char* env = std::getenv("MERGESERVE_ATEN_MODULE");
      env != nullptr && *env != '\0') {
    return env;
  }
  const std::string dir = ExecutableDir();
  const std::string beside = absl::StrCat(dir, "/", kModuleName);
  if (Exists(beside)) return beside;
  const std::string installed =
      absl::StrCat(dir, "/../lib/mergeserve/", kModuleName);
  return Exists(installed) ? installed : beside;
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
    return absl::FailedPreconditionError(absl::StrCat(
        what, " runs on LibTorch, but its module ", path,
        " could not be loaded (",
        state.error.empty() ? "it registered no table" : state.error,
        "); set MERGESERVE_ATEN_MODULE to libmergeserve_aten.so's path"));
  }
}

}  // namespace mergeserve
