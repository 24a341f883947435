// Reading the controller's stream on the executor thread.
#include "worker/stream_reader.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace cox::worker {

StreamReader::StreamReader(int fd, size_t max_frame) : fd_(fd), scanner_(max_frame), buf_(256 * 1024) {}

std::optional<wire::FrameView> StreamReader::next() {
  if (!stash_.empty()) {
    current_ = std::move(stash_.front());
    stash_.pop_front();
    return wire::FrameView{static_cast<wire::MsgType>(current_[0]), current_.data() + 1, current_.size() - 1};
  }
  return next_from_socket();
}

std::optional<wire::FrameView> StreamReader::next_from_socket() {
  for (;;) {
    std::optional<wire::FrameView> frame;
    size_t need = 0;
    const size_t used = scanner_.scan_one(buf_.data() + pos_, have_ - pos_, &frame, &need);
    if (frame) {
      pos_ += used;
      if (auto whole = assembler_.feed(*frame)) return whole;
      continue;  // a fragment: read on
    }
    // Nothing whole is left: keep the partial frame at the front (moved
    // once, not at every read while a large frame comes in).
    if (pos_ > 0) {
      std::memmove(buf_.data(), buf_.data() + pos_, have_ - pos_);
      have_ -= pos_;
      pos_ = 0;
    }
    if (need > buf_.size()) buf_.resize(need);
    if (!fill()) return std::nullopt;
  }
}

bool StreamReader::fill() {
  if (have_ == buf_.size()) buf_.resize(buf_.size() * 2);
  for (;;) {
    // The socket is blocking unless the I/O thread's writes made it
    // non-blocking; then poll() is the wait.
    idle_.store(true, std::memory_order_relaxed);
    ssize_t n = ::read(fd_, buf_.data() + have_, buf_.size() - have_);
    idle_.store(false, std::memory_order_relaxed);
    if (n > 0) {
      have_ += static_cast<size_t>(n);
      last_receive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      return true;
    }
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw Error(std::string("read failed: ") + std::strerror(errno));
    idle_.store(true, std::memory_order_relaxed);
    pollfd p{fd_, POLLIN, 0};
    ::poll(&p, 1, -1);  // the I/O thread's heartbeat check ends a silent controller
    idle_.store(false, std::memory_order_relaxed);
  }
}

}  // namespace cox::worker
