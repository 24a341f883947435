// The controller's stream as the worker's executor reads it: whole frames
// (fragmented messages put back together), in order.
//
// The executor thread reads. While it waits for work it sleeps in read()
// on the socket, as a hand-written server would, so a message costs no
// hand-off between threads. While it runs a message, the I/O thread may
// drain(): read what has arrived (into a side buffer the executor reads
// first) and look at the frames waiting, so that a notice that must not
// wait for the executor (a peer lost in the middle of a collective) is
// acted on, and the controller's heartbeats are heard.
//
// A message may itself wait for a particular answer from the controller (a
// rendezvous while a communicator is set up): wait_for() reads on, setting
// aside the frames that arrive meanwhile; next() hands those out first, in
// order.
//
// In an authenticated session (over TCP) every frame is verified against
// its tag (transport/session_mac.hpp) in take_frame(), the one routine that
// takes a complete frame out of the buffer, before anything looks at it; a
// large chunk read straight into its tensor is verified before on_chunk().
// A frame that fails is a cox::ProtocolError: the worker stops.
#pragma once

#include "transport/session_mac.hpp"
#include "wire/messages.hpp"

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace cox::worker {

class StreamReader {
 public:
  using Clock = std::chrono::steady_clock;

  // Where a large PutData chunk's bytes go (the tensor being received):
  // read straight there, skipping the buffer. nullptr: delivered by next()
  // as usual (so that a bad chunk is refused there, with the reason).
  struct ChunkSink {
    virtual ~ChunkSink() = default;
    virtual uint8_t* chunk_sink(uint64_t id, uint64_t offset, uint64_t len) = 0;
    virtual void on_chunk(uint64_t id, uint64_t offset, uint64_t len) = 0;  // the bytes are in
  };

  // `keys`: the session's, when it is authenticated (their recv side and
  // recv_seq are used); nullptr otherwise.
  StreamReader(int fd, size_t max_frame, const transport::SessionKeys* keys = nullptr);
  void set_chunk_sink(ChunkSink* sink) noexcept { sink_ = sink; }

  // The next frame, or nullopt when the controller closed the stream. The
  // view is valid until the next call of next() or wait_for().
  std::optional<wire::FrameView> next();

  // Reads until a frame of type `type` that `match` accepts arrives; frames
  // before it (heartbeats aside) are kept for next(). Returns a copy of the
  // frame's payload; nullopt when the stream closed.
  // Throws cox::Timeout once `deadline` passes.
  template <class Match>
  std::optional<std::vector<uint8_t>> wait_for(wire::MsgType type, Match&& match, Clock::time_point deadline) {
    std::lock_guard<std::mutex> lk(mu_);
    // Frames set aside keep their order with the chunks after them: no
    // chunk goes straight into its tensor meanwhile.
    waiting_ = true;
    deadline_ = deadline;
    struct Reset {
      StreamReader& r;
      ~Reset() {
        r.waiting_ = false;
        r.deadline_.reset();
      }
    } reset{*this};
    for (;;) {
      auto f = next_from_socket();
      if (!f) return std::nullopt;
      if (f->type == type && match(*f)) return std::vector<uint8_t>(f->payload, f->payload + f->size);
      if (f->type == wire::MsgType::kHeartbeat) continue;
      std::vector<uint8_t> copy(f->size + 1);
      copy[0] = static_cast<uint8_t>(f->type);
      std::memcpy(copy.data() + 1, f->payload, f->size);
      stash_.push_back(std::move(copy));
    }
  }

  // I/O thread, while the executor may be busy: reads what has arrived,
  // without waiting (at most kDrainLimit bytes ahead of the executor), and
  // calls `on_frame` for every whole frame of type `type` (a small one) not
  // yet handed to the executor; a later drain may show it again, and the
  // executor still gets every frame, in order. Does nothing while the
  // executor itself reads. In an authenticated session, throws
  // ProtocolError for a frame whose tag does not check out.
  void drain(wire::MsgType type, const std::function<void(const wire::FrameView&)>& on_frame);
  static constexpr size_t kDrainLimit = size_t{64} << 20;
  // Whether the last drain stopped at kDrainLimit: the stream is not silent,
  // the executor is behind.
  bool behind() const noexcept { return behind_.load(std::memory_order_relaxed); }

  // Any thread: whether the executor is waiting for the stream, and when
  // bytes last arrived.
  bool idle() const noexcept { return idle_.load(std::memory_order_relaxed); }
  Clock::time_point last_receive() const noexcept {
    return Clock::time_point(Clock::duration(last_receive_.load(std::memory_order_relaxed)));
  }

 private:
  std::optional<wire::FrameView> next_locked();
  std::optional<wire::FrameView> next_from_socket();
  // The one place a complete frame leaves the buffer: the frame at pos_,
  // verified (once: frames below verified_ already were) and stepped past.
  // nullopt when it is not whole yet (*need: its whole size, when known).
  std::optional<wire::FrameView> take_frame(size_t* need);
  // Reads into [p, p+n) (the buffer's free space, or a sink); false at the
  // end of the stream. `all`: until n bytes are in.
  bool read_into(uint8_t* p, size_t n, bool all);
  bool fill();
  // A large PutData chunk whose header is at pos_: read into its sink.
  bool read_chunk_direct(size_t need);

  ChunkSink* sink_ = nullptr;
  bool waiting_ = false;  // in wait_for()
  std::optional<Clock::time_point> deadline_;  // wait_for()'s
  const int fd_;
  wire::FrameScanner scanner_;
  wire::Assembler assembler_;
  std::vector<uint8_t> buf_;
  size_t pos_ = 0;   // start of the first frame not yet handed out
  size_t have_ = 0;  // bytes in buf_
  // Authenticated sessions: the tags' checker, and the end of the frames
  // already verified (>= pos_ once a frame is taken), as an offset into
  // buf_[0, have_) followed by side_'s bytes (drain() verifies what it
  // looks at, in order, so it may lie beyond have_).
  std::unique_ptr<transport::FrameMac> mac_;
  size_t verified_ = 0;
  const size_t trailer_;  // transport::kTagBytes when authenticated, else 0
  std::deque<std::vector<uint8_t>> stash_;  // type byte + payload
  std::vector<uint8_t> current_;
  // Held by the executor while it reads and parses, by drain() while it
  // reads into side_; buf_ is written by the executor only.
  std::mutex mu_;
  std::vector<uint8_t> side_;  // drained bytes, after those in buf_
  size_t side_pos_ = 0;        // start of the side bytes not yet taken
  std::atomic<bool> behind_{false};
  std::atomic<bool> idle_{false};
  std::atomic<Clock::rep> last_receive_{Clock::now().time_since_epoch().count()};
};

}  // namespace cox::worker
