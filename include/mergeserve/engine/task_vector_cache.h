// An LRU cache bounded by bytes for what a merge derives from its inputs and
// can reuse across merges of the same checkpoints: per-tensor and per-model
// trim thresholds (the two radix-select passes of TIES/breadcrumbs) and merged
// updates, keyed by the checkpoints' content digests. A sweep over weights on
// the same models then runs one streaming pass per point instead of three,
// and a sweep over λ reads only the base and the update.
//
// Per-expert task vectors are not kept: τ in fp32 is twice the bytes of the
// bf16 inputs it is computed from, so reading a cached τ would cost more
// memory traffic than recomputing it from the page-cached checkpoints. The
// merged update of a whole merge (one fp32 tensor where there were one bf16
// tensor per model, plus the selection passes) is kept: a λ-only change
// reads it and the base.
#ifndef MERGESERVE_ENGINE_TASK_VECTOR_CACHE_H_
#define MERGESERVE_ENGINE_TASK_VECTOR_CACHE_H_

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"

namespace mergeserve {

struct CacheStats {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t bytes = 0;
  int64_t entries = 0;
  int64_t capacity_bytes = 0;
};

class TaskVectorCache {
 public:
  explicit TaskVectorCache(int64_t capacity_bytes)
      : capacity_(capacity_bytes) {}

  // nullptr (and a miss) when absent.
  std::shared_ptr<const void> Get(const std::string& key);
  // Inserts, evicting least recently used entries beyond the capacity.
  void Put(const std::string& key, std::shared_ptr<const void> value,
           int64_t bytes);
  // Evicts least recently used entries until `bytes` more fit, for a
  // caller about to allocate about that much for a Put: what it evicts is
  // freed before the new entry is built rather than after, so the two are
  // not held at once. (Other merges may fill the room meanwhile; their
  // Puts still evict.)
  void MakeRoom(int64_t bytes);
  CacheStats stats() const;
  int64_t capacity_bytes() const { return capacity_; }

  template <typename T>
  std::shared_ptr<const T> GetAs(const std::string& key) {
    return std::static_pointer_cast<const T>(Get(key));
  }

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const void> value;
    int64_t bytes;
  };
  // Unlinks entries from the LRU end until bytes_ <= limit; the caller
  // drops their values after unlocking (a large one unmaps).
  void EvictBeyond(int64_t limit,
                   std::vector<std::shared_ptr<const void>>& evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  mutable std::mutex mu_;
  const int64_t capacity_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // front: most recent
  std::unordered_map<std::string, std::list<Entry>::iterator> index_
      ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_TASK_VECTOR_CACHE_H_
