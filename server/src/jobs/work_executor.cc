#include "mergeserve/jobs/work_executor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/byte_size.h"

namespace mergeserve {

void WorkTicket::Cancel() {
  cancelled_.store(true);
  if (WorkExecutor* owner = owner_.load()) owner->CancelQueued(seq_);
}

WorkExecutor::WorkExecutor(Options options) : options_(options) {
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers_.emplace_back([this] { Loop(); });
  }
}

WorkExecutor::~WorkExecutor() {
  std::deque<Entry> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& t : running_) t->cancelled_.store(true);
    left.swap(queue_);
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
  for (Entry& e : left) {
    e.ticket->owner_ = nullptr;
    if (e.item.abandon) {
      e.item.abandon(absl::UnavailableError("the server is shutting down"));
    }
  }
}

absl::StatusOr<std::shared_ptr<WorkTicket>> WorkExecutor::Submit(WorkItem item,
                                                                 bool force) {
  auto ticket = std::make_shared<WorkTicket>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_ || stopping_) {
      return absl::UnavailableError("the server is shutting down");
    }
    if (options_.memory_budget > 0 && item.memory > options_.memory_budget) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "this ", item.kind, " needs up to ", FormatBytes(item.memory),
          " of memory, more than the server's memory budget of ",
          FormatBytes(options_.memory_budget)));
    }
    if (!force &&
        static_cast<int>(queue_.size()) >= std::max(0, options_.queue_limit)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the work queue is full (", options_.queue_limit,
          " merges, analyses, evaluations or sweeps waiting); try again "
          "later"));
    }
    ticket->owner_ = this;
    ticket->seq_ = next_seq_++;
    queue_.push_back({std::move(item), ticket});
  }
  cv_.notify_all();
  return ticket;
}

void WorkExecutor::CancelQueued(uint64_t seq) {
  Entry removed;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->ticket->seq_ == seq) {
        removed = std::move(*it);
        queue_.erase(it);
        found = true;
        break;
      }
    }
  }
  if (!found) return;  // running (it sees the flag) or finished
  cv_.notify_all();
  removed.ticket->owner_ = nullptr;
  if (removed.item.abandon) {
    removed.item.abandon(absl::CancelledError("cancelled before it started"));
  }
}

bool WorkExecutor::FitsLocked(const Entry& e) const {
  return options_.memory_budget <= 0 || running_.empty() ||
         memory_in_use_ + e.item.memory <= options_.memory_budget;
}

void WorkExecutor::Loop() {
  for (;;) {
    Entry e;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ ||
               (!draining_ && !queue_.empty() && FitsLocked(queue_.front()));
      });
      if (stopping_) return;
      e = std::move(queue_.front());
      queue_.pop_front();
      memory_in_use_ += e.item.memory;
      running_.push_back(e.ticket);
    }
    e.ticket->owner_ = nullptr;  // no longer cancellable from the queue
    e.item.run(e.ticket->cancelled_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      memory_in_use_ -= e.item.memory;
      running_.erase(std::find(running_.begin(), running_.end(), e.ticket));
    }
    cv_.notify_all();
  }
}

void WorkExecutor::Drain(std::chrono::milliseconds grace) {
  std::deque<Entry> left;
  {
    std::unique_lock<std::mutex> lock(mu_);
    draining_ = true;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    cv_.wait_until(lock, deadline, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return running_.empty();
    });
    for (auto& t : running_) t->cancelled_.store(true);
    cv_.wait(lock, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return running_.empty();
    });
    left.swap(queue_);
  }
  // What never started is told now, so streams waiting on it can end
  // before the server stops (merge jobs stay QUEUED on disk).
  for (Entry& e : left) {
    e.ticket->owner_ = nullptr;
    if (e.item.abandon) {
      e.item.abandon(absl::UnavailableError("the server is shutting down"));
    }
  }
}

WorkStats WorkExecutor::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {static_cast<int64_t>(queue_.size()),
          static_cast<int64_t>(running_.size()), memory_in_use_};
}

}  // namespace mergeserve
