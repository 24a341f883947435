// Controller::Impl: the runtime under cox::Controller.
//
// Threads: the caller's threads send and wait; one I/O thread (Asio) owns
// the sockets, the child pipes and pidfds, the handshakes and the heartbeat
// timer, and never waits on anything. State that both touch lives under
// mu_; waiters sleep on cv_ and every waiter has a deadline or wakes when a
// worker is lost.
//
// The work is split by concern:
//   controller.cpp   public API, start-up and shutdown
//   launch.cpp       local workers: devices, spawn, output pipes, exit
//   acceptor.cpp     listening, accepting and the handshake
//   supervision.cpp  messages from workers, heartbeats, loss
//   rendezvous.cpp   the rendezvous of communicators
//   waiting.cpp      sending with backpressure, sync, ping, requests and
//                    their replies (fetches streamed into their tensors)
#pragma once

#include <cox/controller.hpp>

#include "controller/reported_errors.hpp"
#include "controller/runtime.hpp"
#include "transport/channel.hpp"
#include "wire/messages.hpp"

#include <ATen/core/Tensor.h>

#include <asio/basic_socket_acceptor.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <variant>

namespace cox {

class Controller::Impl final : public runtime::Runtime {
 public:
  enum class Mode { kLocal, kAttach };
  using Clock = std::chrono::steady_clock;

  Impl(ControllerOptions options, Mode mode);
  ~Impl();

  // Listens, spawns (local), and waits until every worker has connected.
  void start();
  void shutdown();

  int size() const noexcept override { return static_cast<int>(workers_.size()); }

  // --- the dispatch path: any thread ---
  // Appends already-encoded frames to a worker's ordered stream. Batched:
  // the I/O thread flushes. Throws WorkerLost when the worker is gone, and
  // Timeout when more than send_buffer_bytes stayed queued for it past
  // send_timeout (the caller's thread is the one that waits).
  inline void post(int rank, const uint8_t* data, size_t n);
  void post(int rank, const std::vector<uint8_t>& bytes) { post(rank, bytes.data(), bytes.size()); }
  // The same bytes to several workers: encoded once, copied per worker, and
  // one wake-up of the I/O thread for all of them.
  // Waits for room on every one of them first, so that a Timeout leaves
  // none of them with the message.
  void post(const std::vector<int>& ranks, const std::vector<uint8_t>& bytes) {
    make_room(ranks, "sending work");
    Batch b(*this);
    for (int r : ranks) b.add(r, bytes.data(), bytes.size());
  }
  inline void post_all(const std::vector<uint8_t>& bytes);
  // Waits until every worker in `ranks` has at most send_buffer_bytes
  // queued (Timeout after send_timeout, WorkerLost for a lost one). Callers
  // that send one message to several workers call it first, outside their
  // own locks, and then add without waiting.
  void make_room(const std::vector<int>& ranks, const char* what) override;
  void send(const Send* sends, size_t n) override;

  // Sends to several workers that wake the I/O thread once, when the batch
  // ends (even by an exception: what was added is sent). Adding never waits
  // for room: make_room() comes first.
  class Batch {
   public:
    explicit Batch(Impl& impl) : impl_(impl) {}
    ~Batch() { impl_.wake(wake_); }
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;
    inline void add(int rank, const uint8_t* data, size_t n);

   private:
    Impl& impl_;
    std::vector<std::shared_ptr<transport::Channel>> wake_;
  };

  // Like post(), but never waits for room: for small bookkeeping (frees)
  // that must not hold up a caller who is not sending work.
  inline void post_nowait(int rank, const uint8_t* data, size_t n);
  // Like post(), but written at once when the stream is idle: for small
  // requests someone is about to wait on (sync, ping, fetch). These never
  // wait for room: the caller's own wait for the answer has the deadline.
  void post_now(int rank, const std::vector<uint8_t>& bytes) override;

  // Streams a tensor to a worker: `put` (its header, with nbytes) and then
  // [data, data+nbytes) in chunks within the frame limit. The bytes are
  // borrowed while `keep` lives; returns the position to wait_sent() for
  // before the caller may change them. Does not wait for room (make_room()).
  uint64_t post_tensor(int rank, const wire::Put& put, const uint8_t* data, std::shared_ptr<const void> keep) override;
  // Waits until everything posted to `rank` up to `position` is written to
  // its socket (Timeout after send_timeout, naming the bytes pending).
  void wait_sent(int rank, uint64_t position, const char* what) override;

  void sync(std::optional<std::chrono::milliseconds> timeout);
  // Waits until every worker in `ranks` has processed everything sent to it.
  void sync_ranks(const std::vector<int>& ranks, std::optional<std::chrono::milliseconds> timeout) override;

  // --- requests and their replies ---
  // A fresh id to put in a request.
  uint64_t new_request_id() override { return ++next_id_; }
  // The worker's reply to a request (throws WorkerLost or Timeout).
  Reply wait_reply(int rank, uint64_t request, std::optional<std::chrono::milliseconds> timeout) override;
  // Nobody will read this request's reply: drop it now, or when it comes.
  void forget(int rank, uint64_t request) noexcept override;

  std::shared_ptr<runtime::Service> service(std::string_view key,
                                            const std::function<std::shared_ptr<runtime::Service>()>& make) override;
  std::chrono::nanoseconds ping(int rank, std::optional<std::chrono::milliseconds> timeout);

  // Collectives: the controller is the rendezvous of every communicator.
  // Registers one before its members are told to join: each member sends a
  // blob and, once all have, every member gets every blob; a member lost
  // first makes the rendezvous fail for all, so none waits for ever.
  void expect_rendezvous(uint64_t comm, const std::vector<int>& ranks) override;
  void fail_rendezvous(uint64_t comm, const std::string& why) override;
  const ControllerOptions& options() const noexcept override { return opts_; }
  // Waits up to `limit` for one of `ranks` to be lost, and throws its
  // WorkerLost if so (a failed collective usually means a peer is going).
  void await_loss(const std::vector<int>& ranks, std::chrono::milliseconds limit) override;

  int64_t worker_pid(int rank) const;
  std::string device(int rank) const override;
  std::vector<int> lost_workers() const override;
  std::vector<WorkerStatus> status() const;
  // The host a worker's control connection came from ("" for a local one).
  std::string host(int rank) const override;
  AttachInfo attach_info() const;
  // Connections refused during the handshake, and why (newest last).
  std::vector<std::string> rejected_connections() const;
  // Bytes queued for a worker and not yet written to its socket.
  inline size_t pending_bytes(int rank) const;
  // Replies held for requests, and requests whose reply will be dropped
  // (for tests: once the replies are in, dropped futures leave none).
  size_t held_replies() const;
  // Whether a RemoteError is held for the next sync (for tests).
  bool has_remote_error() const {
    std::lock_guard<std::mutex> lk(mu_);
    return errors_.any();
  }
  // A fetch raised the failure of error value `value` (wire::Failed::value):
  // sync does not raise its reports again (reported_errors.hpp).
  void error_delivered(uint64_t value) noexcept override {
    std::lock_guard<std::mutex> lk(mu_);
    errors_.delivered(value);
  }

 private:
  struct Worker;
  struct Inbound;
  struct Handshake;

  Worker& worker(int rank) {
    if (__builtin_expect(rank < 0 || rank >= size(), 0)) bad_rank(rank);
    return *workers_[static_cast<size_t>(rank)];
  }
  const Worker& worker(int rank) const {
    if (__builtin_expect(rank < 0 || rank >= size(), 0)) bad_rank(rank);
    return *workers_[static_cast<size_t>(rank)];
  }
  [[noreturn]] void bad_rank(int rank) const;
  [[noreturn]] void throw_lost(int rank) const;
  // The caller's thread waits for room in a worker's queue (waiting.cpp).
  void wait_for_room(Worker& w, Clock::time_point deadline, const char* what);
  [[noreturn]] void send_timed_out(const Worker& w, const char* what, Clock::duration waited);

  // Schedules start_write() on the I/O thread for each channel.
  void wake(std::vector<std::shared_ptr<transport::Channel>>& channels);

  // I/O thread: acceptor.cpp
  void listen();
  void accept_next();
  void begin_handshake(transport::Socket socket);
  void read_hello_reply(const std::shared_ptr<Handshake>& hs);
  void finish_handshake(const std::shared_ptr<Handshake>& hs, const wire::HelloReply& reply);
  void reject(const std::shared_ptr<Handshake>& hs, const std::string& reason, bool tell_peer);
  // I/O thread: launch.cpp
  std::vector<std::string> plan_devices();
  void spawn_all();
  void watch_child(Worker& w);
  void on_child_exit(Worker& w);
  void read_output(Worker& w, bool err);
  void on_output(Worker& w, bool err, const char* data, size_t n, bool eof);
  void kill_child(Worker& w);
  // I/O thread: supervision.cpp
  void on_closed(Worker& w, const std::string& reason);
  void start_heartbeats();
  void on_heartbeat_timer();
  void mark_lost(Worker& w, const std::string& reason);
  void on_op_timeout(Worker& w, const wire::Heartbeat& m);
  // I/O thread: rendezvous.cpp
  void on_rendezvous(Worker& w, const wire::Rendezvous& m);
  // With mu_ held: the replies that fail a rendezvous, to send after.
  void fail_rendezvous_locked(uint64_t comm, const std::string& why,
                              std::vector<std::pair<int, std::vector<uint8_t>>>& out);
  void send_replies(std::vector<std::pair<int, std::vector<uint8_t>>>& out);
  // I/O thread: waiting.cpp. A reply arrived (kept unless forgotten).
  void on_reply(uint64_t request, Reply reply);

  // Waits (caller's thread) until pred() or a worker in `ranks` (all when
  // empty) is lost, or the deadline; then throws for a loss, or returns
  // false on timeout. Called with mu_ held. (waiting.hpp)
  template <class Pred>
  bool wait_for(std::unique_lock<std::mutex>& lk, std::optional<Clock::time_point> deadline,
                const std::vector<int>& ranks, Pred pred);
  void rethrow_first_error(std::unique_lock<std::mutex>& lk);

  ControllerOptions opts_;
  Mode mode_;
  bool shared_gpus_ = false;  // more local workers than GPUs
  std::string token_;
  std::string socket_dir_;  // local mode: private directory holding the socket
  std::string endpoint_;    // "unix:/path" or "host:port"
  uint16_t port_ = 0;

  asio::io_context io_;
  std::optional<asio::basic_socket_acceptor<asio::generic::stream_protocol>> acceptor_;
  asio::steady_timer heartbeat_timer_;
  std::thread io_thread_;
  std::vector<uint8_t> heartbeat_frame_;

  std::vector<std::unique_ptr<Worker>> workers_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  int connected_ = 0;
  bool shutting_down_ = false;
  bool shut_down_ = false;
  ReportedErrors errors_;  // RemoteErrors reported since the last sync, not yet delivered
  std::unordered_map<uint64_t, Reply> replies_;
  std::unordered_map<uint64_t, int> forgotten_;  // requests whose reply nobody will read -> rank
  std::vector<std::pair<std::string, std::shared_ptr<runtime::Service>>> services_;
  std::vector<std::string> rejected_;
  struct Rendezvous {
    std::vector<int> ranks;
    std::vector<std::optional<std::string>> blobs;
    size_t have = 0;
    std::string failed;  // why, once it failed
  };
  std::unordered_map<uint64_t, Rendezvous> rendezvous_;
  std::atomic<uint64_t> next_id_{0};
  // Bumped by the I/O thread after every change a waiter may wait for, so
  // that waiters can spin on it briefly before sleeping.
  std::atomic<uint64_t> events_{0};
};

// One worker as the controller sees it.
struct Controller::Impl::Worker final : transport::Channel::Handler {
  Worker(Impl& impl, int rank, asio::io_context& io)
      : impl(impl), rank(rank), stdout_pipe(io), stderr_pipe(io), pidfd(io), exit_timer(io), grace_timer(io) {}

  // supervision.cpp
  void on_frame(const wire::FrameView& f) override;
  void on_read_done() override;
  uint8_t* chunk_sink(wire::MsgType type, uint64_t request, uint64_t offset, uint64_t len) override;
  void on_chunk(wire::MsgType type, uint64_t request, uint64_t offset, uint64_t len) override;
  void on_closed(const std::string& reason) override { impl.on_closed(*this, reason); }

  Impl& impl;
  const int rank;
  std::shared_ptr<transport::Channel> channel;  // set once, before start() returns
  std::atomic<bool> lost_flag{false};

  // I/O thread: fetches being received, by request.
  struct Incoming {
    at::Tensor value;  // empty when the reply is dropped as it comes
    uint64_t nbytes = 0, received = 0;
  };
  std::unordered_map<uint64_t, Incoming> incoming;
  bool wake = false;  // I/O thread: a waiter may have something new

  // Local workers (I/O thread).
  pid_t pid = -1;
  std::string spawn_device;  // the --device it was given
  asio::posix::stream_descriptor stdout_pipe, stderr_pipe, pidfd;
  asio::steady_timer exit_timer;   // polls for exit where pidfds are missing
  asio::steady_timer grace_timer;  // connection closed: time for the exit status to arrive
  std::array<char, 4096> out_buf{}, err_buf{};
  std::string out_partial, err_partial;

  // Under mu_.
  std::string device;  // reported at the handshake
  std::string host;    // where its connection came from (TCP only)
  wire::Heartbeat progress;      // its last heartbeat's report
  uint64_t op_timeout_seen = 0;  // the message op_timeout was last reported for
  bool connected = false;
  bool exited = false;
  int exit_status = 0;
  std::exception_ptr lost;
  uint64_t synced = 0;     // highest sync id answered
  uint64_t echoed = 0;     // highest echo id answered
  std::deque<std::string> last_stderr;
};

void Controller::Impl::post(int rank, const uint8_t* data, size_t n) {
  Worker& w = worker(rank);
  if (__builtin_expect(w.lost_flag.load(std::memory_order_relaxed), 0)) throw_lost(rank);
  if (__builtin_expect(w.channel->pending() > opts_.send_buffer_bytes, 0)) {
    wait_for_room(w, Clock::now() + opts_.send_timeout, "sending work");
  }
  w.channel->send(data, n);
}

void Controller::Impl::post_all(const std::vector<uint8_t>& bytes) {
  for (const auto& w : workers_) {
    if (__builtin_expect(w->channel->pending() > opts_.send_buffer_bytes, 0)) {
      std::vector<int> all(workers_.size());
      for (int r = 0; r < size(); ++r) all[static_cast<size_t>(r)] = r;
      make_room(all, "sending work");
      break;
    }
  }
  Batch b(*this);
  for (int r = 0; r < size(); ++r) b.add(r, bytes.data(), bytes.size());
}

void Controller::Impl::post_nowait(int rank, const uint8_t* data, size_t n) {
  Worker& w = worker(rank);
  if (__builtin_expect(w.lost_flag.load(std::memory_order_relaxed), 0)) throw_lost(rank);
  w.channel->send(data, n);
}

size_t Controller::Impl::pending_bytes(int rank) const { return worker(rank).channel->pending(); }

void Controller::Impl::Batch::add(int rank, const uint8_t* data, size_t n) {
  Worker& w = impl_.worker(rank);
  if (__builtin_expect(w.lost_flag.load(std::memory_order_relaxed), 0)) impl_.throw_lost(rank);
  if (w.channel->send_deferred(data, n)) wake_.push_back(w.channel);
}

}  // namespace cox
