#ifndef MERGESERVE_JOBS_SCRATCH_POOL_H_
#define MERGESERVE_JOBS_SCRATCH_POOL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace mergeserve {

// Sweep points' folders kept after their evaluation, for later points to
// overwrite in place (MergeOptions::recycle_dir) rather than write new
// files: a kept folder's pages stay in the page cache, and new files get
// fresh pages, which a VM whose host takes freed memory back (free page
// reporting) faults in at 1.4-3.6 s/GB. Kept across sweeps, so a server's
// sweeps after its first write into recycled pages. At most `max_bytes` of
// files are kept (on disk and, while the kernel does not need the memory,
// in the page cache); the server's start removes them with the rest of its
// scratch. Thread-safe.
class ScratchPool {
 public:
  ScratchPool(std::string dir, int64_t max_bytes);

  // A kept folder, now the caller's to recycle or remove (the most recently
  // kept: its pages are likeliest still cached); "" if none.
  std::string Take();
  // Moves a finished scratch output into the pool, or removes it where that
  // would pass max_bytes or the move fails.
  void Keep(const std::string& folder);
  // Bytes of files kept now.
  int64_t kept_bytes() const;

 private:
  struct Kept {
    std::string path;
    int64_t bytes = 0;
  };
  const std::string dir_;
  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::vector<Kept> kept_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_SCRATCH_POOL_H_
