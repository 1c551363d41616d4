// Ties broken by flat index inside the merge pass itself.
//
// An exact-keep selection keeps the first `need` entries equal to its
// threshold, in flat order. Which of a chunk's ties that takes depends on
// how many ties the chunks before it hold. Counting them took a pass of its
// own over the tensor; the merge pass counts each chunk's ties anyway, so
// each chunk publishes its count and looks back for the earlier ones (a
// decoupled look-back, as in GPU prefix scans).
//
// Deadlock-free with ThreadPool::Run: tasks are handed out in index order and
// each thread runs one at a time, so every chunk before a waiting one is
// already running on some thread and publishes without waiting for a later
// one. A chunk that stops early (an error, a cancellation) publishes
// nothing; its waiters give up when `abandon` says the pass has failed.
#ifndef MERGESERVE_METHODS_TIE_LEDGER_H_
#define MERGESERVE_METHODS_TIE_LEDGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

namespace mergeserve {

class TieLedger {
 public:
  TieLedger(int64_t chunks, int64_t need);

  // Chunk `ci` holds `equal` ties: returns how many of them are kept (the
  // first ones), or -1 when abandon() turned true while it waited for an
  // earlier chunk. Once per chunk.
  int64_t Allow(int64_t ci, int64_t equal,
                const std::function<bool()>& abandon);

 private:
  const int64_t need_;
  // -1 until published: ties in chunk c, and in the chunks before c.
  std::unique_ptr<std::atomic<int64_t>[]> count_, before_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_TIE_LEDGER_H_
