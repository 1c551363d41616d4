#include "mergeserve/engine/task_vector_cache.h"

namespace mergeserve {

std::shared_ptr<const void> TaskVectorCache::Get(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) {
    ++misses_;
    return nullptr;
  }
  ++hits_;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->value;
}

void TaskVectorCache::Put(const std::string& key,
                          std::shared_ptr<const void> value, int64_t bytes) {
  if (bytes > capacity_) return;
  std::vector<std::shared_ptr<const void>> evicted;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it != index_.end()) {
    bytes_ -= it->second->bytes;
    evicted.push_back(std::move(it->second->value));
    lru_.erase(it->second);
    index_.erase(it);
  }
  lru_.push_front({key, std::move(value), bytes});
  index_[key] = lru_.begin();
  bytes_ += bytes;
  EvictBeyond(capacity_, evicted);
}

void TaskVectorCache::MakeRoom(int64_t bytes) {
  std::vector<std::shared_ptr<const void>> evicted;
  std::lock_guard<std::mutex> lock(mu_);
  EvictBeyond(capacity_ - bytes, evicted);
}

void TaskVectorCache::EvictBeyond(
    int64_t limit, std::vector<std::shared_ptr<const void>>& evicted) {
  while (bytes_ > limit && !lru_.empty()) {
    bytes_ -= lru_.back().bytes;
    evicted.push_back(std::move(lru_.back().value));
    index_.erase(lru_.back().key);
    lru_.pop_back();
  }
}

CacheStats TaskVectorCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {hits_, misses_, bytes_, static_cast<int64_t>(index_.size()),
          capacity_};
}

}  // namespace mergeserve
