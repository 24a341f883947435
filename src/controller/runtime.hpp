// What the runtime offers the layers above it (the tensor engine): ordered
// streams to workers, requests and their replies, sync, the rendezvous of
// communicators, loss, and services that live as long as the runtime.
//
// Controller::Impl implements it over processes and sockets; tests of the
// engine use an in-process fake (tests/tensor/fake_runtime.hpp), as c10d's
// FakeProcessGroup stands in for a real process group. This header is all
// the engine sees of the runtime: no Asio, no sockets.
#pragma once

#include <cox/controller.hpp>

#include "wire/messages.hpp"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace cox::runtime {

using Millis = std::chrono::milliseconds;

// An object that lives with a runtime, one per key, made on first use (as
// an Asio service lives with its execution context). The runtime tells it
// when it shuts down: after that, it must not call the runtime again.
class Service {
 public:
  virtual ~Service() = default;
  virtual void on_shutdown() noexcept = 0;
};

class Runtime {
 public:
  // A fetched tensor, whole.
  struct Fetched {
    at::Tensor value;
  };
  using Reply = std::variant<Fetched, wire::MetaReply, wire::StatsReply, wire::Done, wire::Failed>;
  // Encoded frames for one worker's stream.
  struct Send {
    int rank;
    const uint8_t* data;
    size_t size;
  };

  virtual ~Runtime() = default;

  // --- the workers ---
  virtual int size() const noexcept = 0;
  virtual const ControllerOptions& options() const noexcept = 0;
  // Where a worker's tensors live ("cpu", "cuda:0"), and the host its
  // connection came from ("" for a local worker).
  virtual std::string device(int rank) const = 0;
  virtual std::string host(int rank) const = 0;
  virtual std::vector<int> lost_workers() const = 0;

  // --- sending: any thread ---
  // Waits until every worker in `ranks` has room in its queue (cox::Timeout
  // after send_timeout, cox::WorkerLost for a lost one). Callers wait here
  // first, outside their own locks, and then send without waiting.
  virtual void make_room(const std::vector<int>& ranks, const char* what) = 0;
  // Appends frames to workers' ordered streams, in order, and wakes the I/O
  // once for all of them. Never waits. Throws cox::WorkerLost at the first
  // lost worker (what came before it is sent).
  virtual void send(const Send* sends, size_t n) = 0;
  // One small request someone is about to wait on: written at once when the
  // stream is idle, never waits for room.
  virtual void post_now(int rank, const std::vector<uint8_t>& frame) = 0;
  // Streams a tensor to a worker: `put` (its header) and then the bytes in
  // chunks within the frame limit, borrowed while `keep` lives. Returns the
  // position to wait_sent() for before the caller may change them.
  virtual uint64_t post_tensor(int rank, const wire::Put& put, const uint8_t* data,
                               std::shared_ptr<const void> keep) = 0;
  virtual void wait_sent(int rank, uint64_t position, const char* what) = 0;
  // Waits until every worker in `ranks` has processed everything sent to
  // it; throws the first unobserved RemoteError since the last sync.
  virtual void sync_ranks(const std::vector<int>& ranks, std::optional<Millis> timeout) = 0;
  // A RemoteError for the failure that made error value `value`
  // (wire::Failed::value) reached the user: sync does not raise its
  // reports again.
  virtual void error_delivered(uint64_t value) noexcept = 0;

  // --- requests and their replies ---
  virtual uint64_t new_request_id() = 0;
  // The worker's reply to a request (throws WorkerLost or Timeout).
  virtual Reply wait_reply(int rank, uint64_t request, std::optional<Millis> timeout) = 0;
  // Nobody will read this request's reply: drop it now, or when it comes.
  virtual void forget(int rank, uint64_t request) noexcept = 0;
  // Waits up to `limit` for one of `ranks` to be lost, and throws its
  // WorkerLost if so (a failed collective usually means a peer is going).
  virtual void await_loss(const std::vector<int>& ranks, Millis limit) = 0;

  // --- the rendezvous of communicators ---
  // Registered before the members are told to join; a member lost first
  // fails it for all.
  virtual void expect_rendezvous(uint64_t comm, const std::vector<int>& ranks) = 0;
  virtual void fail_rendezvous(uint64_t comm, const std::string& why) = 0;

  // --- services ---
  // The service under `key`, made by `make` the first time.
  virtual std::shared_ptr<Service> service(std::string_view key,
                                           const std::function<std::shared_ptr<Service>()>& make) = 0;
};

// The runtime under a public Controller (defined by the runtime layer).
Runtime& of(Controller& controller);

}  // namespace cox::runtime
