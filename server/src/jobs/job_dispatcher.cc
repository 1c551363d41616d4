#include "mergeserve/jobs/job_dispatcher.h"

#include <algorithm>
#include <memory>

#include "mergeserve/base/clock.h"
#include "mergeserve/base/log.h"

namespace mergeserve {

JobDispatcher::JobDispatcher(JobStore* store, Options options, Hooks hooks)
    : store_(store),
      options_(std::move(options)),
      hooks_(std::move(hooks)),
      start_ms_(NowMs()) {
  poll_ = options_.poll;
  auto listener = store_->Listen();
  if (listener.ok() && *listener != nullptr) {
    listener_ = *std::move(listener);
    // Notifications carry the news; polling only covers a lost one.
    poll_ = std::max(poll_, std::chrono::milliseconds(1000));
  } else if (!listener.ok()) {
    LogEvent("job_listen_failed",
             {{"error", std::string(listener.status().message())},
              {"fallback", "polling"}});
  }
}

void JobDispatcher::Start() {
  claimer_ = std::thread([this] { ClaimLoop(); });
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  if (listener_ != nullptr) listen_ = std::thread([this] { ListenLoop(); });
}

JobDispatcher::~JobDispatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (claimer_.joinable()) claimer_.join();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (listen_.joinable()) listen_.join();
}

void JobDispatcher::ListenLoop() {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    auto got = listener_->Wait(std::chrono::milliseconds(200));
    if (!got.ok()) continue;  // reconnects on the next Wait; polls cover it
    bool queued = false, changed = false;
    for (const std::string& p : *got) {
      if (p == "queued") {
        queued = true;
      } else if (p.rfind("cancel:", 0) == 0) {
        LeaseCheck c;
        c.id = p.substr(7);
        c.cancel_requested = true;
        hooks_.on_check(c);  // ignored unless this replica holds it
      } else {
        changed = true;
      }
    }
    if (queued) Wake();
    if (changed && hooks_.on_poll) hooks_.on_poll();
  }
}

void JobDispatcher::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

void JobDispatcher::StopClaiming() {
  std::lock_guard<std::mutex> lock(mu_);
  claiming_ = false;
}

std::chrono::milliseconds JobDispatcher::heartbeat_period() const {
  // Three renewals per lease, and at least one a second so that a cancel
  // made through another replica arrives within about a second.
  return std::chrono::milliseconds(
      std::clamp<int64_t>(options_.lease_ms / 3, 100, 1000));
}

void JobDispatcher::ClaimLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, poll_, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || wake_;
    });
    if (stopping_) break;
    wake_ = false;
    const bool claiming = claiming_;
    lock.unlock();
    while (claiming && hooks_.has_capacity()) {
      auto claimed = store_->Claim(options_.replica, options_.lease_ms);
      if (!claimed.ok()) {
        LogEvent("job_claim_failed",
                 {{"error", std::string(claimed.status().message())}});
        break;
      }
      if (!claimed->has_value()) break;
      LogEvent("job_claimed",
               {{"job", (*claimed)->id},
                {"replica", options_.replica},
                {"attempt", std::to_string((*claimed)->attempt)}});
      hooks_.start(**std::move(claimed));
    }
    if (hooks_.on_poll) hooks_.on_poll();
    lock.lock();
  }
}

void JobDispatcher::HeartbeatLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    (void)store_->TouchReplica(options_.replica, start_ms_);
    auto checks =
        store_->Heartbeat(options_.replica, hooks_.held(), options_.lease_ms);
    if (checks.ok()) {
      for (const LeaseCheck& c : *checks) {
        if (c.lost || c.cancel_requested) hooks_.on_check(c);
      }
    }
    auto failed = store_->RequeueExpired(options_.max_attempts);
    if (failed.ok() && !failed->empty()) hooks_.on_failed(*failed);
    lock.lock();
    // Requeued jobs may be ours to take.
    wake_ = true;
    cv_.notify_all();
    cv_.wait_for(lock, heartbeat_period(),
                 [&]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; });
  }
}

}  // namespace mergeserve
