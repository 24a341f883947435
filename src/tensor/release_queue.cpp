// The release queue.
#include "tensor/release_queue.hpp"

namespace cox::tensor {

void ReleaseQueue::release(uint64_t id, const std::vector<int>& ranks) noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  if (!rt_) return;
  if (queues_.empty()) queues_.resize(static_cast<size_t>(rt_->size()));
  for (int r : ranks) {
    auto& q = queues_[static_cast<size_t>(r)];
    q.push_back(id);
    if (q.size() >= kFlushAt) flush_locked(r);
  }
}

void ReleaseQueue::forget(int rank, uint64_t request) noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  if (rt_) rt_->forget(rank, request);
}

void ReleaseQueue::take(int rank, std::vector<uint8_t>& out) {
  std::lock_guard<std::mutex> lk(mu_);
  take_locked(rank, out);
}

void ReleaseQueue::take(const std::vector<int>& ranks, std::vector<uint8_t>& out, std::vector<size_t>& ends) {
  std::lock_guard<std::mutex> lk(mu_);
  for (int r : ranks) {
    take_locked(r, out);
    ends.push_back(out.size());
  }
}

void ReleaseQueue::take_locked(int rank, std::vector<uint8_t>& out) {
  if (queues_.empty()) return;
  auto& q = queues_[static_cast<size_t>(rank)];
  if (q.empty()) return;
  wire::Free f;
  f.ids = wire::Ids{reinterpret_cast<const uint8_t*>(q.data()), static_cast<uint32_t>(q.size())};
  wire::encode_frame(f, out);
  q.clear();
}

void ReleaseQueue::flush(int rank) noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  flush_locked(rank);
}

void ReleaseQueue::flush_locked(int rank) noexcept {
  if (!rt_) return;
  for (size_t r = 0; r < queues_.size(); ++r) {
    if (rank >= 0 && static_cast<int>(r) != rank) continue;
    frame_.clear();
    take_locked(static_cast<int>(r), frame_);
    if (frame_.empty()) continue;
    const runtime::Runtime::Send s{static_cast<int>(r), frame_.data(), frame_.size()};
    try {
      rt_->send(&s, 1);
    } catch (...) {
      // A lost worker frees nothing; the rest go on.
    }
  }
}

void ReleaseQueue::detach() noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  rt_ = nullptr;
  queues_.clear();
}

}  // namespace cox::tensor
