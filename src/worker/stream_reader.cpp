// Reading the controller's stream on the executor thread.
#include "worker/stream_reader.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>

namespace cox::worker {

namespace {
// Chunks at least this large are read straight into their tensor.
constexpr size_t kDirectChunk = 64 * 1024;
}  // namespace

StreamReader::StreamReader(int fd, size_t max_frame, const transport::SessionKeys* keys)
    : fd_(fd),
      scanner_(max_frame, keys ? transport::kTagBytes : 0),
      buf_(256 * 1024),
      trailer_(keys ? transport::kTagBytes : 0) {
  if (keys) mac_ = std::make_unique<transport::FrameMac>(keys->recv, keys->recv_seq);
}

std::optional<wire::FrameView> StreamReader::take_frame(size_t* need) {
  std::optional<wire::FrameView> frame;
  const size_t used = scanner_.scan_one(buf_.data() + pos_, have_ - pos_, &frame, need);
  if (!frame) return std::nullopt;
  if (mac_ && pos_ + used > verified_) {
    mac_->verify(*frame);  // throws ProtocolError: nothing unverified gets past
    verified_ = pos_ + used;
  }
  pos_ += used;
  return frame;
}

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
    size_t need = 0;
    if (auto frame = take_frame(&need)) {
      if (auto whole = assembler_.feed(*frame)) return whole;
      continue;  // a fragment: read on
    }
    // Nothing whole is left: keep the partial frame at the front (moved
    // once, not at every read while a large frame comes in).
    if (pos_ > 0) {
      std::memmove(buf_.data(), buf_.data() + pos_, have_ - pos_);
      have_ -= pos_;
      verified_ = verified_ > pos_ ? verified_ - pos_ : 0;
      pos_ = 0;
    }
    if (need >= kDirectChunk && sink_ && !waiting_ && stash_.empty() && assembler_.idle()) {
      if (read_chunk_direct(need)) continue;
    }
    if (need > buf_.size()) buf_.resize(need);
    if (!fill()) return std::nullopt;
  }
}

bool StreamReader::read_chunk_direct(size_t need) {
  const size_t have = have_ - pos_;
  if (have < wire::kChunkOverhead) return false;
  const uint8_t* h = buf_.data() + pos_;
  if (static_cast<wire::MsgType>(h[wire::kFrameHeaderBytes]) != wire::MsgType::kPutData) return false;
  uint64_t id, offset, len;
  std::memcpy(&id, h + 5, 8);
  std::memcpy(&offset, h + 13, 8);
  std::memcpy(&len, h + 21, 8);
  // A chunk whose lengths disagree goes the usual way, to be refused there.
  if (len > need || need != wire::kChunkOverhead + len + trailer_) return false;
  uint8_t* dest = sink_->chunk_sink(id, offset, len);
  if (!dest) return false;
  // What is here: the header, part of the data, perhaps part of the tag.
  const size_t got = have - wire::kChunkOverhead;
  const size_t got_data = static_cast<size_t>(std::min<uint64_t>(got, len));
  std::array<uint8_t, wire::kChunkOverhead> head;
  std::array<uint8_t, transport::kTagBytes> tag{};
  std::memcpy(head.data(), h, head.size());
  std::memcpy(dest, h + wire::kChunkOverhead, got_data);
  std::memcpy(tag.data(), h + wire::kChunkOverhead + got_data, got - got_data);
  pos_ = have_ = verified_ = 0;
  if (!read_into(dest + got_data, static_cast<size_t>(len) - got_data, true) ||
      !read_into(tag.data() + (got - got_data), trailer_ - (got - got_data), true)) {
    throw Error("the controller closed the connection in the middle of a tensor");
  }
  // Into the tensor, but not handed on, before the tag checks out.
  if (mac_) mac_->verify(head.data(), head.size(), dest, static_cast<size_t>(len), tag.data());
  sink_->on_chunk(id, offset, len);
  return true;
}

bool StreamReader::fill() {
  if (have_ == buf_.size()) buf_.resize(buf_.size() * 2);
  return read_into(buf_.data() + have_, buf_.size() - have_, false);
}

bool StreamReader::read_into(uint8_t* p, size_t n, bool all) {
  size_t done = 0;
  while (done < n) {
    // The socket is blocking unless the I/O thread's writes made it
    // non-blocking; then poll() is the wait. Under a deadline, a read
    // only follows a poll that found data.
    idle_.store(true, std::memory_order_relaxed);
    ssize_t r = deadline_ ? ::recv(fd_, p + done, n - done, MSG_DONTWAIT) : ::read(fd_, p + done, n - done);
    idle_.store(false, std::memory_order_relaxed);
    if (r > 0) {
      done += static_cast<size_t>(r);
      last_receive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      if (p == buf_.data() + have_) have_ += static_cast<size_t>(r);
      if (!all) return true;
      continue;
    }
    if (r == 0) return false;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw Error(std::string("read failed: ") + std::strerror(errno));
    int wait_ms = -1;  // the I/O thread's heartbeat check ends a silent controller
    if (deadline_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline_ - Clock::now()).count();
      if (left <= 0) throw Timeout("no answer from the controller in time");
      wait_ms = static_cast<int>(std::min<int64_t>(left, 1 << 30));
    }
    idle_.store(true, std::memory_order_relaxed);
    pollfd pfd{fd_, POLLIN, 0};
    ::poll(&pfd, 1, wait_ms);
    idle_.store(false, std::memory_order_relaxed);
  }
  return true;
}

}  // namespace cox::worker
