// Hugging Face Hub ids (`org/name`, `org/name@revision`) resolved offline
// from a Hugging Face cache folder, the way teams share a cache volume:
// HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub, laid out
// as models--org--name/{refs/<rev>, snapshots/<commit>/}.
#ifndef MERGESERVE_ENGINE_HUB_CACHE_H_
#define MERGESERVE_ENGINE_HUB_CACHE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace mergeserve {

// True for what reads as a Hub id rather than a path: ORG/NAME[@REV], no
// leading '.', '/' or '~', exactly one '/'.
bool LooksLikeHubId(const std::string& ref);
// The cache folder in use (from the environment).
std::string HubCacheDir();
// The snapshot folder of `ref` in `cache_dir`: the revision's (a branch or
// tag through refs/, or a commit), else main's, else the only snapshot.
// NOT_FOUND says where it looked.
absl::StatusOr<std::string> FindInHubCache(const std::string& ref,
                                           const std::string& cache_dir);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_HUB_CACHE_H_
