// Temporary files and folders on a data dir that several replicas share
// carry the id of the replica writing them ("x.tmp-@replica-a@-1f2e..."),
// so that cleanup of orphans removes only what a replica that is gone (or
// this one, before it restarted) left behind, never a live one's work.
#ifndef MERGESERVE_BASE_TEMP_TAG_H_
#define MERGESERVE_BASE_TEMP_TAG_H_

#include <string>

namespace mergeserve {

// Sets this process's replica id (characters other than letters, digits,
// '.', '_' and '-' become '_'). Call once at start-up.
void SetTempTag(const std::string& replica);
// "@<replica>@", or "" when none was set (a one-shot command).
std::string TempTag();
// The tag `replica` writes into its temporaries' names.
std::string TempTagFor(const std::string& replica);

}  // namespace mergeserve

#endif  // MERGESERVE_BASE_TEMP_TAG_H_
