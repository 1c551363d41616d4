#include "methods/tie_ledger.h"

#include <algorithm>
#include <thread>

namespace mergeserve {

TieLedger::TieLedger(int64_t chunks, int64_t need)
    : need_(need),
      count_(new std::atomic<int64_t>[static_cast<size_t>(chunks)]),
      before_(new std::atomic<int64_t>[static_cast<size_t>(chunks)]) {
  for (int64_t c = 0; c < chunks; ++c) {
    count_[c].store(-1, std::memory_order_relaxed);
    before_[c].store(c == 0 ? 0 : -1, std::memory_order_relaxed);
  }
}

int64_t TieLedger::Allow(int64_t ci, int64_t equal,
                         const std::function<bool()>& abandon) {
  count_[ci].store(equal, std::memory_order_release);
  // Back to the nearest chunk whose prefix is known, then forward through
  // the counts, each published by a chunk already running.
  int64_t j = ci;
  while (before_[j].load(std::memory_order_acquire) < 0) --j;
  int64_t before = before_[j].load(std::memory_order_acquire);
  for (; j < ci; ++j) {
    int64_t c;
    int spins = 0;
    while ((c = count_[j].load(std::memory_order_acquire)) < 0) {
      if (++spins % 1024 == 0) {
        if (abandon()) return -1;
        std::this_thread::yield();
      }
    }
    before += c;
  }
  before_[ci].store(before, std::memory_order_release);
  return std::clamp<int64_t>(need_ - before, 0, equal);
}

}  // namespace mergeserve
