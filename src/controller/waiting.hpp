// Controller::Impl::wait_for: how a caller's thread waits for the I/O
// thread (controller.cpp and waiting.cpp use it).
#pragma once

#include "controller/controller_impl.hpp"

namespace cox {

template <class Pred>
bool Controller::Impl::wait_for(std::unique_lock<std::mutex>& lk, std::optional<Clock::time_point> deadline,
                                const std::vector<int>& ranks, Pred pred) {
  auto lost = [&]() -> std::exception_ptr {
    if (ranks.empty()) {
      for (auto& w : workers_) {
        if (w->lost) return w->lost;
      }
    } else {
      for (int r : ranks) {
        if (workers_[static_cast<size_t>(r)]->lost) return workers_[static_cast<size_t>(r)]->lost;
      }
    }
    return nullptr;
  };
  auto ready = [&] { return pred() || lost() != nullptr || shut_down_; };
  // Replies to a waiting caller usually come within tens of microseconds:
  // spin on the event counter for a moment before paying for a sleep and a
  // wake-up.
  const auto spin_until = Clock::now() + std::chrono::microseconds(100);
  while (!ready() && Clock::now() < spin_until) {
    const uint64_t seen = events_.load(std::memory_order_acquire);
    lk.unlock();
    while (events_.load(std::memory_order_acquire) == seen && Clock::now() < spin_until) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    lk.lock();
  }
  if (deadline) {
    if (!cv_.wait_until(lk, *deadline, ready)) return false;
  } else {
    cv_.wait(lk, ready);
  }
  if (pred()) return true;
  if (auto e = lost()) std::rethrow_exception(e);
  // shutdown() from another thread: nothing this waits for will come.
  throw Error("the controller was shut down while this call waited");
}

}  // namespace cox
