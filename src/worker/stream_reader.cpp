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
  std::lock_guard<std::mutex> lk(mu_);
  return next_locked();
}

std::optional<wire::FrameView> StreamReader::next_locked() {
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
    // (Not a chunk drain() has verified already: that one is taken whole.)
    if (need >= kDirectChunk && sink_ && !waiting_ && stash_.empty() && assembler_.idle() && verified_ == 0) {
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
    if (side_pos_ < side_.size()) {
      // What drain() read comes first.
      const size_t k = std::min(n - done, side_.size() - side_pos_);
      std::memcpy(p + done, side_.data() + side_pos_, k);
      side_pos_ += k;
      if (side_pos_ == side_.size()) side_.clear(), side_pos_ = 0;
      if (p == buf_.data() + have_) have_ += k;
      done += k;
      if (!all) return true;
      continue;
    }
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

void StreamReader::drain(wire::MsgType type, const std::function<void(const wire::FrameView&)>& on_frame) {
  std::unique_lock<std::mutex> lk(mu_, std::try_to_lock);
  if (!lk) return;  // the executor is reading: it sees every frame itself
  // Read what is there.
  bool behind = false;
  for (;;) {
    const size_t queued = (have_ - pos_) + (side_.size() - side_pos_);
    if (queued >= kDrainLimit) {
      behind = true;
      break;
    }
    const size_t at = side_.size();
    const size_t want = std::min<size_t>(kDrainLimit - queued, 1 << 20);
    side_.resize(at + want);
    const ssize_t r = ::recv(fd_, side_.data() + at, want, MSG_DONTWAIT);
    side_.resize(at + (r > 0 ? static_cast<size_t>(r) : 0));
    if (r > 0) {
      last_receive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    break;  // nothing more now; the end of the stream and errors are the executor's to see
  }
  behind_.store(behind, std::memory_order_relaxed);
  // Walk the whole frames waiting: those in buf_ from pos_ (a frame
  // boundary whenever the executor is not reading), then those in side_.
  // In an authenticated session each is verified first, in order (the
  // executor's verify skips them then): nothing unverified is acted on.
  const size_t in_buf = have_ - pos_;
  const size_t total = in_buf + (side_.size() - side_pos_);
  auto byte_at = [&](size_t i) { return i < in_buf ? buf_[pos_ + i] : side_[side_pos_ + (i - in_buf)]; };
  // [at, at+n) as at most two pieces: in buf_, then in side_.
  auto pieces = [&](size_t at, size_t n, const uint8_t** a, size_t* an, const uint8_t** b, size_t* bn) {
    *an = at < in_buf ? std::min(n, in_buf - at) : 0;
    *a = *an ? buf_.data() + pos_ + at : nullptr;
    *bn = n - *an;
    *b = *bn ? side_.data() + side_pos_ + (at + *an - in_buf) : nullptr;
  };
  std::vector<uint8_t> frame;
  size_t at = 0;
  while (total - at >= wire::kFrameHeaderBytes + 1) {
    uint32_t len = 0;
    for (size_t k = 0; k < 4; ++k) len |= uint32_t{byte_at(at + k)} << (8 * k);
    // Partial (a bad header is the executor's to refuse).
    if (len == 0 || total - at - wire::kFrameHeaderBytes < size_t{len} + trailer_) break;
    const size_t end = at + wire::kFrameHeaderBytes + len + trailer_;
    if (mac_ && pos_ + end > verified_) {
      const uint8_t *a, *b;
      size_t an, bn;
      pieces(at, wire::kFrameHeaderBytes + len, &a, &an, &b, &bn);
      std::array<uint8_t, transport::kTagBytes> tag;
      for (size_t k = 0; k < tag.size(); ++k) tag[k] = byte_at(at + wire::kFrameHeaderBytes + len + k);
      mac_->verify(a, an, b, bn, tag.data());  // throws ProtocolError
      verified_ = pos_ + end;
    }
    if (static_cast<wire::MsgType>(byte_at(at + wire::kFrameHeaderBytes)) == type && len <= wire::kMinMaxFrame) {
      frame.resize(len - 1);
      for (size_t k = 0; k + 1 < len; ++k) frame[k] = byte_at(at + wire::kFrameHeaderBytes + 1 + k);
      on_frame(wire::FrameView{type, frame.data(), frame.size()});
    }
    at = end;
  }
}

}  // namespace cox::worker
