// Communicator: one group of worker processes that run collectives together.
//
// The interface takes raw pointers and element counts, no tensors, so that
// the NCCL implementation compiles with the CUDA toolkit alone. Two
// implementations: Gloo over TCP for CPU workers (collectives/gloo.hpp) and
// NCCL for CUDA workers (collectives/nccl.hpp). Both are created from a
// rendezvous: every member contributes a blob (Gloo addresses, an NCCL unique
// id) and receives everyone's, through the controller.
//
// Every call blocks the calling thread until the collective is complete on
// this rank (Gloo), or until it is enqueued on the communicator's stream
// (NCCL); a failure (a peer gone, a timeout) throws CommError and leaves
// the communicator broken: later calls throw at once.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <atomic>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace cox::collectives {

enum class DataType : uint8_t {
  kFloat32,
  kFloat64,
  kFloat16,
  kBFloat16,
  kInt64,
  kInt32,
  kInt8,
  kUInt8,
};
size_t element_size(DataType t) noexcept;
const char* to_string(DataType t) noexcept;

enum class ReduceOp : uint8_t { kSum = 0, kAvg = 1, kMin = 2, kMax = 3, kProduct = 4 };
constexpr uint8_t kMaxReduceOp = 4;
const char* to_string(ReduceOp op) noexcept;

struct CommOptions {
  // How long one collective (or the connection set-up) may wait for its
  // peers before it fails.
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};
};

class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Every member's blob, indexed by the member's rank in the group; throws
// CommError when the rendezvous fails (a member was lost).
using Exchange = std::function<std::vector<std::string>(const std::string& mine)>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  virtual const char* backend() const noexcept = 0;

  // `in` may equal `out` (in place). Avg of integers truncates toward zero.
  virtual void all_reduce(const void* in, void* out, size_t count, DataType t, ReduceOp op) = 0;
  // `in` holds size() blocks of `count` elements; block i is reduced into
  // rank i's `out`.
  virtual void reduce_scatter(const void* in, void* out, size_t count, DataType t, ReduceOp op) = 0;
  // Rank i's `count` elements land in block i of every `out`.
  virtual void all_gather(const void* in, void* out, size_t count, DataType t) = 0;
  // Block j of rank i's `in` lands in block i of rank j's `out`.
  virtual void all_to_all(const void* in, void* out, size_t count, DataType t) = 0;
  // The root's `in` lands in every rank's `out` (`in` is read on the root only).
  virtual void broadcast(const void* in, void* out, size_t count, DataType t, int root) = 0;
  virtual void barrier() = 0;

  // Point to point, matched by (peer, tag). Sends and receives started
  // between begin_group() and end_group() are in flight together (then
  // wait for each): ranks that swap data, or pass it round a ring, cannot
  // deadlock. (Gloo needs no group; NCCL orders operations on one stream
  // and would otherwise run a send before the receive after it.)
  virtual void begin_group() {}
  virtual void end_group() {}
  class Transfer {
   public:
    virtual ~Transfer() = default;
    virtual void wait() = 0;
  };
  virtual std::unique_ptr<Transfer> start_send(const void* data, size_t bytes, int peer, uint64_t tag) = 0;
  virtual std::unique_ptr<Transfer> start_recv(void* data, size_t bytes, int peer, uint64_t tag) = 0;

  // One status byte per rank, gathered while a collective runs: started
  // before it and finished after it, so that it costs no extra round trip.
  // Returns every rank's byte.
  class StatusExchange {
   public:
    virtual ~StatusExchange() = default;
    // Called right after the collective it accompanies was issued (before
    // anything that reads that collective's output is): NCCL issues the two
    // as one group, one launch.
    virtual void issued() {}
    virtual std::vector<uint8_t> finish() = 0;
  };
  virtual std::unique_ptr<StatusExchange> start_status_exchange(uint8_t mine) = 0;

  // Why the communicator stopped working, or empty (the calling thread's
  // view; cancel() shows here once a call has seen it).
  const std::string& broken() const noexcept { return broken_; }

  // Any thread (a member was lost): the call in progress, if any, and every
  // later one end promptly with CommError(why): what is blocked in a
  // connect, a collective or a transfer is woken, not left to its timeout.
  // Idempotent; the first reason stays.
  void cancel(const std::string& why) {
    {
      std::lock_guard<std::mutex> lk(cancel_mu_);
      if (cancelled_.load(std::memory_order_relaxed)) return;
      cancel_why_ = why;
      cancelled_.store(true, std::memory_order_release);
    }
    on_cancel();
  }
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }

 protected:
  Communicator(int rank, int size) : rank_(rank), size_(size) {}
  // Called once by cancel(), on the cancelling thread: wake whatever is
  // blocked (Gloo closes its pairs; NCCL's waits poll cancelled()).
  virtual void on_cancel() {}
  std::string cancel_reason() const {
    std::lock_guard<std::mutex> lk(cancel_mu_);
    return cancel_why_;
  }
  // Runs f; on failure marks the communicator broken and throws CommError
  // naming `what` (or the reason it was cancelled).
  template <class F>
  void guarded(const char* what, F&& f) {
    if (!broken_.empty()) throw CommError(broken_);
    if (cancelled()) {
      broken_ = cancel_reason();
      throw CommError(broken_);
    }
    try {
      f();
    } catch (const std::exception& e) {
      if (cancelled()) {
        broken_ = std::string(backend()) + " " + what + " cancelled: " + cancel_reason();
      } else if (dynamic_cast<const CommError*>(&e)) {
        broken_ = e.what();
      } else {
        broken_ = std::string(backend()) + " " + what + " failed: " + e.what();
      }
      throw CommError(broken_);
    }
  }

  const int rank_;
  const int size_;
  std::string broken_;

 private:
  mutable std::mutex cancel_mu_;
  std::atomic<bool> cancelled_{false};
  std::string cancel_why_;
};

}  // namespace cox::collectives
