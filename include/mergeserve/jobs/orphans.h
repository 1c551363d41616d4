// Temporary folders a crashed process leaves in the data dir: unfinished
// uploads, results and statistics being written, sweep scratch merges. They
// belong to no record; the server removes them when it starts.
#ifndef MERGESERVE_JOBS_ORPHANS_H_
#define MERGESERVE_JOBS_ORPHANS_H_

#include <string>
#include <vector>

namespace mergeserve {

// Removes them; returns their paths (each also logged).
std::vector<std::string> CollectOrphanedTemporaries(
    const std::string& data_dir);

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_ORPHANS_H_
