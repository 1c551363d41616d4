// Temporary folders a crashed process leaves in the data dir: unfinished
// uploads, results and statistics being written, sweep scratch merges. They
// belong to no record; the server removes them when it starts. On a data
// dir several replicas share, those named with the tag of a replica in
// `live` (a recent heartbeat) are that replica's work in progress and stay.
#ifndef MERGESERVE_JOBS_ORPHANS_H_
#define MERGESERVE_JOBS_ORPHANS_H_

#include <string>
#include <vector>

namespace mergeserve {

// Removes them; returns their paths (each also logged).
std::vector<std::string> CollectOrphanedTemporaries(
    const std::string& data_dir, const std::vector<std::string>& live = {});

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_ORPHANS_H_
