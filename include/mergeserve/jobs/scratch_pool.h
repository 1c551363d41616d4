#ifndef MERGESERVE_JOBS_SCRATCH_POOL_H_
#define MERGESERVE_JOBS_SCRATCH_POOL_H_

#include <chrono>
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
// in the page cache); a batch removes what it does not take (Shrink), the
// janitor what has been idle (DropIdle: they are merges of some tenant's
// checkpoints), and the server's start the rest of its scratch.
// Thread-safe.
// How long an idle server keeps a sweep's evaluated points for the next.
inline constexpr std::chrono::minutes kScratchIdle{5};

class ScratchPool {
 public:
  ScratchPool(std::string dir, int64_t max_bytes);

  // A kept folder, now the caller's to recycle or remove (the most recently
  // kept: its pages are likeliest still cached); "" if none.
  std::string Take();
  // Moves a finished scratch output into the pool, or removes it where that
  // would pass max_bytes or the move fails.
  void Keep(const std::string& folder);
  // Removes the oldest kept folders until at most `max_bytes` are kept.
  void Shrink(int64_t max_bytes);
  // Removes the folders kept longer than `idle` ago.
  void DropIdle(std::chrono::steady_clock::duration idle);
  // Bytes of files kept now.
  int64_t kept_bytes() const;
  // Folders Take() has handed out so far.
  int64_t taken() const;

 private:
  struct Kept {
    std::string path;
    int64_t bytes = 0;
    std::chrono::steady_clock::time_point at;
  };
  // Drops kept_[0, n) (the oldest), their files removed after the lock.
  std::vector<std::string> DropOldest(size_t n)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const std::string dir_;
  const int64_t max_bytes_;
  mutable absl::Mutex mu_;
  std::vector<Kept> kept_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t taken_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_JOBS_SCRATCH_POOL_H_
