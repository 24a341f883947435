// Channel: one authenticated, ordered, batched byte stream to a peer, with a
// control lane that no data backlog can hold up.
//
// Threads. Any thread may send; none ever waits inside a send. Sends append
// to a queue and the I/O thread (Asio) writes it out. A thread that must
// not run ahead of the peer (the user's thread issuing work, a worker
// streaming a large reply) waits explicitly, with a deadline, in
// wait_pending_below() or wait_written(). Reads run on the I/O thread and
// hand whole, checked frames (fragments put back together) to the Handler.
//
// Lanes. Data frames (ops, tensor chunks, replies) keep their order.
// Control frames (heartbeats, rendezvous replies, and later loss notices
// and aborts) go out ahead of every data frame not yet written: the writer
// lets them in between messages, and writes data in slices of at most a
// few MiB, so a control frame waits for at most one slice, never for a
// backlog.
//
// Authentication. Given session keys (attach mode, over TCP), every frame
// written carries its tag (transport/session_mac.hpp), computed when the
// frame is written out, in wire order (the control lane reorders frames),
// by whichever thread writes: the I/O thread, or a send_now() that finds
// the channel idle. Every frame read is verified before the handler sees
// it; a chunk read straight into its destination is verified before
// on_chunk(). A frame that fails closes the channel as a protocol error.
// A borrowed frame stays borrowed: its tag is computed over the borrowed
// bytes and travels in a small buffer of its own.
//
// Limits. No frame above the peer's limit is ever written: a larger message
// is cut into wire::Fragment frames here, and tensor data is sent in chunks
// by its callers (wire::chunk_bytes).
#pragma once

#include "transport/session_mac.hpp"
#include "wire/messages.hpp"

#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace cox::transport {

using Socket = asio::generic::stream_protocol::socket;

class Channel : public std::enable_shared_from_this<Channel> {
 public:
  struct Handler {
    virtual ~Handler() = default;
    // I/O thread: one whole frame of a known type within the size limit
    // (a fragmented message arrives whole). The view is valid during the
    // call. Throwing cox::ProtocolError closes the channel.
    virtual void on_frame(const wire::FrameView& f) = 0;
    // I/O thread: the frames of one read have all been delivered.
    virtual void on_read_done() {}
    // I/O thread: a large tensor chunk (PutData or FetchData) is arriving.
    // Returning where its `len` bytes belong lets the channel read them
    // straight there, skipping its buffer; on_chunk() follows once they
    // are all in. Returning nullptr delivers it through on_frame() as usual
    // (so that a bad chunk is refused there, with the reason).
    virtual uint8_t* chunk_sink(wire::MsgType, uint64_t /*id*/, uint64_t /*offset*/, uint64_t /*len*/) {
      return nullptr;
    }
    virtual void on_chunk(wire::MsgType, uint64_t /*id*/, uint64_t /*offset*/, uint64_t /*len*/) {}
    // I/O thread, once: the channel is closed (peer closed it, an I/O error,
    // a protocol error, or close()).
    virtual void on_closed(const std::string& reason) = 0;
  };

  // `max_frame` bounds frames both ways (the session's max_frame_bytes).
  // `keys`: the session's keys when it is authenticated, else nullptr.
  Channel(Socket socket, size_t max_frame, Handler* handler, const SessionKeys* keys = nullptr);
  ~Channel();

  // I/O thread: starts reading.
  void start();

  // --- sending: any thread, never blocks; bytes sent after close() are dropped ---
  // The position returned for a send on a closed channel: never written.
  static constexpr uint64_t kDropped = ~uint64_t{0};
  // Whole frames on the data lane, batched with what is queued; a frame
  // above the limit is fragmented. Returns the data lane's position after
  // these bytes (see wait_written).
  uint64_t send(const uint8_t* data, size_t n);
  uint64_t send(const std::vector<uint8_t>& bytes) { return send(bytes.data(), bytes.size()); }
  // As send(), but written at once from the calling thread when nothing is
  // queued or being written: for messages someone is about to wait on.
  uint64_t send_now(const uint8_t* data, size_t n);
  uint64_t send_now(const std::vector<uint8_t>& bytes) { return send_now(bytes.data(), bytes.size()); }
  // One frame on the data lane whose tail is borrowed, not copied: `head`
  // holds the frame's first bytes (length, type, fields) and `tail` the
  // rest, which must stay valid and unchanged while `keep` lives and until
  // it is written (wait_written). The frame must be within the limit.
  uint64_t send_borrowed(const uint8_t* head, size_t head_len, const uint8_t* tail, size_t tail_len,
                         std::shared_ptr<const void> keep);
  // Whole frames on the control lane: ahead of every data frame not yet
  // written. Each must be within the limit.
  void send_control(const uint8_t* data, size_t n);
  void send_control(const std::vector<uint8_t>& bytes) { send_control(bytes.data(), bytes.size()); }
  // Appends to the data lane without waking the I/O thread; returns true
  // when the caller must call start_write() there (once, for any number of
  // sends). Lets a message to many workers cost one wake-up, not one each.
  bool send_deferred(const uint8_t* data, size_t n);

  // --- waiting: user threads (never the I/O thread) ---
  enum class Wait { kOk, kClosed, kTimeout };
  // Until at most `limit` bytes of data are queued and unwritten.
  Wait wait_pending_below(size_t limit, std::chrono::steady_clock::time_point deadline);
  // Until the data lane has been written up to `position`.
  Wait wait_written(uint64_t position, std::chrono::steady_clock::time_point deadline);
  // Data bytes queued and not yet written.
  size_t pending() const noexcept {
    return static_cast<size_t>(queued_.load(std::memory_order_relaxed) - written_.load(std::memory_order_relaxed));
  }
  // Data bytes written so far (a waiter tells progress from a stall by it).
  uint64_t written() const noexcept { return written_.load(std::memory_order_relaxed); }

  // I/O thread: writes what is queued.
  void start_write();
  // Any thread but the I/O thread: waits until everything queued is
  // written, or `timeout` passes; for a process about to exit.
  bool flush_blocking(std::chrono::milliseconds timeout);
  // I/O thread: closes the socket; on_closed(reason) follows.
  void close(const std::string& reason);

  bool closed() const;
  size_t max_frame() const noexcept { return max_frame_; }
  // When bytes last arrived (any thread).
  std::chrono::steady_clock::time_point last_receive() const noexcept {
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(last_receive_.load(std::memory_order_relaxed)));
  }
  asio::any_io_executor executor() { return socket_.get_executor(); }

 private:
  // Queued bytes: owned frames (many small ones batched together), or a
  // frame whose tail is borrowed. In an authenticated session each owned
  // frame is followed by room for its tag, and a borrowed frame's tag goes
  // in `tag`.
  struct Item {
    std::vector<uint8_t> bytes;
    const uint8_t* tail = nullptr;
    size_t tail_len = 0;
    std::shared_ptr<const void> keep;
    bool ends_message = true;  // false inside a fragmented message: no control frame may follow it
    size_t sealed = 0;         // authenticated: bytes of `bytes` whose frames carry their tags
    size_t tag_len = 0;        // a borrowed frame's tag: 0, or kTagBytes
    std::array<uint8_t, kTagBytes> tag;
    size_t size() const noexcept { return bytes.size() + tail_len + tag_len; }
  };

  // With mu_ held: appends to the data lane; true when a write must be scheduled.
  bool enqueue_locked(const uint8_t* data, size_t n);
  void append_locked(const uint8_t* data, size_t n, bool ends_message);
  // Copies the frames of [data, data+n) to `out`, with room for their tags
  // in an authenticated session.
  void copy_frames(std::vector<uint8_t>& out, const uint8_t* data, size_t n) const;
  // The writer (the I/O thread in write_out, or send_now with the channel
  // idle): computes the tags of the item's frames not yet sealed.
  void seal(Item& it);
  bool needs_write_locked() const noexcept { return !writing_ && !flush_posted_; }
  void schedule_write();
  void write_out(std::unique_lock<std::mutex>& lk);
  void on_written(const std::error_code& ec);
  void read_more();
  void on_read(const std::error_code& ec, size_t n);
  // With the header of a large chunk at the front of in_: reads its payload
  // into the handler's sink, when it gives one. Returns whether it did.
  bool read_chunk_direct();
  void fail(const std::string& reason);

  Socket socket_;
  const size_t max_frame_;
  wire::FrameScanner scanner_;
  Handler* handler_;
  // Authenticated sessions only. send_mac_: the writer's (see seal());
  // recv_mac_: the I/O thread's.
  std::unique_ptr<FrameMac> send_mac_, recv_mac_;
  const size_t trailer_;  // kTagBytes when authenticated, else 0

  // Read side (I/O thread only).
  std::vector<uint8_t> in_;
  size_t in_len_ = 0;
  wire::Assembler assembler_;
  bool failed_ = false;
  std::atomic<std::chrono::steady_clock::rep> last_receive_;
  // A chunk being read straight into its destination: its first bytes and
  // its tag, for verification before on_chunk().
  std::array<uint8_t, wire::kChunkOverhead> chunk_head_{};
  std::array<uint8_t, kTagBytes> chunk_tag_{};

  // Write side.
  mutable std::mutex mu_;
  std::condition_variable progress_;  // written_ moved, or closed
  std::deque<Item> control_;          // under mu_
  std::deque<Item> data_;             // under mu_
  std::vector<Item> inflight_;        // being written (I/O thread, or the direct writer)
  std::vector<asio::const_buffer> buffers_;
  std::vector<std::vector<uint8_t>> spare_;  // under mu_: written batches' buffers, for reuse
  std::vector<uint8_t> direct_;              // under mu_: send_now's frames with their tags
  size_t inflight_data_ = 0;          // data bytes of inflight_
  bool resume_first_ = false;         // data_.front() is the rest of a partly written frame
  bool writing_ = false;              // under mu_: a write of inflight_ is in progress
  bool flush_posted_ = false;         // under mu_: start_write is queued on the I/O thread
  bool closed_ = false;               // under mu_
  size_t waiters_ = 0;                // under mu_: threads in a wait_*
  std::atomic<uint64_t> queued_{0};   // data bytes ever queued (written under mu_, read anywhere)
  std::atomic<uint64_t> written_{0};  // data bytes ever written (written under mu_, read anywhere)
};

}  // namespace cox::transport
