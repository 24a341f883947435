// Channel: one authenticated, ordered, batched byte stream to a peer.
//
// Any thread may send(). Bytes are appended to a pending buffer; the I/O
// thread is woken only when the buffer goes from idle to non-empty, so a
// burst of messages costs one wake-up and one write, not a syscall each.
// send_now() is for messages someone waits on (sync, ping): when no write is
// in flight it writes from the calling thread at once, saving the hop to the
// I/O thread. Reads run on the I/O thread; whole, checked frames go to the
// Handler.
#pragma once

#include "wire/messages.hpp"

#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>

#include <chrono>
#include <condition_variable>
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
    // I/O thread: [data, data+n) holds whole frames of known types within
    // the size limit. Throwing cox::ProtocolError closes the channel.
    virtual void on_frames(const uint8_t* data, size_t n) = 0;
    // I/O thread, once: the channel is closed (peer closed it, an I/O error,
    // a protocol error, or close()).
    virtual void on_closed(const std::string& reason) = 0;
  };

  Channel(Socket socket, size_t max_frame, Handler* handler);
  ~Channel();

  // I/O thread: starts reading.
  void start();
  // Any thread. Bytes sent after close() are dropped.
  void send(const uint8_t* data, size_t n);
  void send(const std::vector<uint8_t>& bytes) { send(bytes.data(), bytes.size()); }
  void send_now(const uint8_t* data, size_t n);
  void send_now(const std::vector<uint8_t>& bytes) { send_now(bytes.data(), bytes.size()); }
  // Appends without waking the I/O thread; returns true when the caller
  // must call start_write() there (once, for any number of sends). Lets a
  // message to many workers cost one wake-up instead of one per worker.
  bool send_deferred(const uint8_t* data, size_t n);
  // I/O thread: writes what is pending.
  void start_write();
  // Any thread: writes everything pending from the calling thread, blocking
  // until done or `timeout` passes; for a process about to exit.
  bool flush_blocking(std::chrono::milliseconds timeout);
  // I/O thread: closes the socket; on_closed(reason) follows.
  void close(const std::string& reason);

  bool closed() const;
  // I/O thread: when bytes last arrived.
  std::chrono::steady_clock::time_point last_receive() const noexcept { return last_receive_; }
  asio::any_io_executor executor() { return socket_.get_executor(); }

 private:
  bool enqueue(const uint8_t* data, size_t n, bool now);
  void schedule_write();
  void write_out(std::unique_lock<std::mutex>& lk);
  void on_written(const std::error_code& ec);
  void read_more();
  void on_read(const std::error_code& ec, size_t n);
  void fail(const std::string& reason);

  Socket socket_;
  wire::FrameScanner scanner_;
  Handler* handler_;

  // Read side (I/O thread only).
  std::vector<uint8_t> in_;
  size_t in_len_ = 0;
  std::chrono::steady_clock::time_point last_receive_;
  bool failed_ = false;

  // Write side.
  mutable std::mutex mu_;
  std::condition_variable drained_;
  std::vector<uint8_t> pending_;  // appended by senders
  std::vector<uint8_t> out_;      // being written (I/O thread)
  bool writing_ = false;          // a write of out_ (or a direct write) is in progress
  bool flush_posted_ = false;     // start_write is queued on the I/O thread
  bool closed_ = false;
  size_t blocked_senders_ = 0;
};

// Calls f(FrameView) for each frame of a range that a Channel delivered.
template <class F>
void for_each_frame(const uint8_t* data, size_t n, F&& f) {
  size_t at = 0;
  while (at < n) {
    uint32_t len;
    std::memcpy(&len, data + at, sizeof len);
    f(wire::FrameView{static_cast<wire::MsgType>(data[at + wire::kFrameHeaderBytes]),
                      data + at + wire::kFrameHeaderBytes + 1, len - 1});
    at += wire::kFrameHeaderBytes + len;
  }
}

}  // namespace cox::transport
