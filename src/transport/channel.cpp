// Channel: batched writes, direct writes when idle, frame-checked reads.
#include "transport/channel.hpp"

#include <asio/post.hpp>
#include <asio/write.hpp>

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <thread>
#include <cstring>

namespace cox::transport {
namespace {

constexpr size_t kReadChunk = 256 * 1024;
// A sender blocks while this much is waiting to be written: a peer that stops
// reading cannot make the controller's memory grow without bound.
constexpr size_t kHighWater = 256 * 1024 * 1024;

// One non-blocking send; returns bytes written, 0 when the socket is full,
// -1 on an error (left for the I/O thread to report).
ssize_t send_some(int fd, const uint8_t* p, size_t n) {
  for (;;) {
    ssize_t w = ::send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w >= 0) return w;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    return -1;
  }
}

}  // namespace

Channel::Channel(Socket socket, size_t max_frame, Handler* handler)
    : socket_(std::move(socket)), scanner_(max_frame), handler_(handler), in_(kReadChunk),
      last_receive_(std::chrono::steady_clock::now()) {}

Channel::~Channel() = default;

void Channel::start() { read_more(); }

bool Channel::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closed_;
}

void Channel::send(const uint8_t* data, size_t n) {
  if (enqueue(data, n, false)) schedule_write();
}

void Channel::send_now(const uint8_t* data, size_t n) {
  if (enqueue(data, n, true)) schedule_write();
}

bool Channel::send_deferred(const uint8_t* data, size_t n) { return enqueue(data, n, false); }

void Channel::schedule_write() {
  asio::post(socket_.get_executor(), [self = shared_from_this()] { self->start_write(); });
}

// Appends; returns true when the caller must schedule start_write() on the
// I/O thread (the channel was idle and nothing is scheduled yet).
bool Channel::enqueue(const uint8_t* data, size_t n, bool now) {
  std::unique_lock<std::mutex> lk(mu_);
  if (pending_.size() > kHighWater) {
    ++blocked_senders_;
    drained_.wait(lk, [&] { return closed_ || pending_.size() <= kHighWater; });
    --blocked_senders_;
  }
  if (closed_) return false;
  pending_.insert(pending_.end(), data, data + n);
  if (writing_ || flush_posted_) return false;  // the write in progress picks it up
  if (now) {
    ssize_t w = send_some(socket_.native_handle(), pending_.data(), pending_.size());
    if (w == static_cast<ssize_t>(pending_.size())) {
      pending_.clear();
      return false;
    }
    if (w > 0) pending_.erase(pending_.begin(), pending_.begin() + w);
  }
  flush_posted_ = true;
  return true;
}

void Channel::start_write() {
  std::unique_lock<std::mutex> lk(mu_);
  flush_posted_ = false;
  if (writing_ || closed_ || pending_.empty()) return;
  write_out(lk);
}

// Moves pending_ to out_ and writes it asynchronously. Called with mu_ held.
void Channel::write_out(std::unique_lock<std::mutex>& lk) {
  writing_ = true;
  out_.swap(pending_);
  if (blocked_senders_) drained_.notify_all();
  lk.unlock();
  asio::async_write(socket_, asio::buffer(out_),
                    [self = shared_from_this()](const std::error_code& ec, size_t) { self->on_written(ec); });
}

void Channel::on_written(const std::error_code& ec) {
  if (ec) {
    fail("write failed: " + ec.message());
    return;
  }
  std::unique_lock<std::mutex> lk(mu_);
  out_.clear();
  writing_ = false;
  if (!closed_ && !pending_.empty()) {
    write_out(lk);
  } else if (blocked_senders_) {
    drained_.notify_all();
  }
}

bool Channel::flush_blocking(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lk(mu_);
  // Wait for an asynchronous write in progress, then write the rest here,
  // holding the lock so that the I/O thread cannot start another.
  ++blocked_senders_;
  const bool idle = drained_.wait_until(lk, deadline, [&] { return closed_ || !writing_; });
  --blocked_senders_;
  if (!idle) return false;
  if (closed_) return false;
  const int fd = socket_.native_handle();
  size_t done = 0;
  while (done < pending_.size()) {
    ssize_t w = send_some(fd, pending_.data() + done, pending_.size() - done);
    if (w < 0) return false;
    done += static_cast<size_t>(w);
    if (w == 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(left.count()));
    }
  }
  pending_.clear();
  return true;
}

void Channel::read_more() {
  if (in_.size() - in_len_ < kReadChunk / 4) in_.resize(std::max(in_.size() * 2, in_len_ + kReadChunk));
  socket_.async_read_some(asio::buffer(in_.data() + in_len_, in_.size() - in_len_),
                          [self = shared_from_this()](const std::error_code& ec, size_t n) { self->on_read(ec, n); });
}

void Channel::on_read(const std::error_code& ec, size_t n) {
  if (failed_) return;
  if (ec) {
    fail(ec == asio::error::eof ? std::string("connection closed by peer") : "read failed: " + ec.message());
    return;
  }
  in_len_ += n;
  last_receive_ = std::chrono::steady_clock::now();
  size_t need = 0;
  try {
    const size_t used = scanner_.scan(in_.data(), in_len_, [](const wire::FrameView&) {}, &need);
    if (used) {
      handler_->on_frames(in_.data(), used);
      if (failed_) return;
      std::memmove(in_.data(), in_.data() + used, in_len_ - used);
      in_len_ -= used;
    }
  } catch (const ProtocolError& e) {
    fail(std::string("protocol error: ") + e.what());
    return;
  }
  if (need > in_.size()) in_.resize(need);
  read_more();
}

void Channel::close(const std::string& reason) { fail(reason); }

void Channel::fail(const std::string& reason) {
  if (failed_) return;
  failed_ = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }
  drained_.notify_all();
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
  handler_->on_closed(reason);
}

}  // namespace cox::transport
