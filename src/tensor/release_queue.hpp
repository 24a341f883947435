// The release queue: ids of dead tensors, per worker, waiting to be freed.
// They ride in front of the next op sent to their worker (so dead shards go
// at once, and their memory is reused while still warm), or go out on
// their own at a sync, a fetch, or once many have queued.
#pragma once

#include "controller/runtime.hpp"

#include <cstdint>
#include <mutex>
#include <vector>

namespace cox::tensor {

// Its calls never throw: they run in destructors.
class ReleaseQueue {
 public:
  explicit ReleaseQueue(runtime::Runtime* rt) : rt_(rt) {}

  // Queues `id` on each rank; flushes a rank that has queued many.
  void release(uint64_t id, const std::vector<int>& ranks) noexcept;
  // Drops the reply to a request nobody will read (a future dropped unread).
  void forget(int rank, uint64_t request) noexcept;
  // Appends the Free frame of `rank`'s queue to `out` (nothing when empty).
  void take(int rank, std::vector<uint8_t>& out);
  // The same for each of `ranks`, under one lock: ends[i] is the size of
  // `out` after ranks[i]'s frame.
  void take(const std::vector<int>& ranks, std::vector<uint8_t>& out, std::vector<size_t>& ends);
  // Sends every queue (or one rank's) now.
  void flush(int rank = -1) noexcept;
  // The runtime is going: nothing more is sent. Waits for a send in
  // progress.
  void detach() noexcept;

 private:
  static constexpr size_t kFlushAt = 1024;
  void take_locked(int rank, std::vector<uint8_t>& out);
  void flush_locked(int rank) noexcept;

  std::mutex mu_;
  runtime::Runtime* rt_;
  std::vector<std::vector<uint64_t>> queues_;  // per worker rank
  std::vector<uint8_t> frame_;
};

}  // namespace cox::tensor
