// Channel: two lanes, slice-by-slice writes, direct writes when idle,
// frame-checked reads that put fragments back together.
#include "transport/channel.hpp"

#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace cox::transport {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kReadChunk = 256 * 1024;
// Small frames are batched into items of up to this many bytes.
constexpr size_t kBatchBytes = 256 * 1024;
// Chunks at least this large are read straight into place (when the
// handler says where).
constexpr size_t kDirectChunk = 64 * 1024;
// Written batches' buffers kept for reuse.
constexpr size_t kSpareBuffers = 4;
// Data written per write operation, at most (one message more, when a
// fragmented message must not be split by a control frame): the longest a
// control frame waits.
constexpr size_t kWriteSlice = size_t{4} << 20;

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

// Counters written only under the channel's lock (read without it): a plain
// store, not a locked read-modify-write, on the per-message path.
inline void add(std::atomic<uint64_t>& counter, uint64_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace

Channel::Channel(Socket socket, size_t max_frame, Handler* handler, const SessionKeys* keys)
    : socket_(std::move(socket)),
      max_frame_(max_frame),
      scanner_(max_frame, keys ? kTagBytes : 0),
      handler_(handler),
      trailer_(keys ? kTagBytes : 0),
      in_(kReadChunk),
      last_receive_(Clock::now().time_since_epoch().count()) {
  if (keys) {
    send_mac_ = std::make_unique<FrameMac>(keys->send, keys->send_seq);
    recv_mac_ = std::make_unique<FrameMac>(keys->recv, keys->recv_seq);
  }
}

Channel::~Channel() = default;

void Channel::start() { read_more(); }

bool Channel::closed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return closed_;
}

// --- sending -----------------------------------------------------------------------

void Channel::copy_frames(std::vector<uint8_t>& out, const uint8_t* data, size_t n) const {
  if (trailer_) {
    append_with_tag_room(out, data, n);
  } else {
    out.insert(out.end(), data, data + n);
  }
}

void Channel::seal(Item& it) {
  if (it.tail) {
    if (!it.sealed) {
      send_mac_->seal(it.bytes.data(), it.bytes.size(), it.tail, it.tail_len, it.tag.data());
      it.sealed = it.bytes.size();
    }
  } else if (it.sealed < it.bytes.size()) {
    send_mac_->seal_frames(it.bytes.data() + it.sealed, it.bytes.size() - it.sealed);
    it.sealed = it.bytes.size();
  }
}

void Channel::append_locked(const uint8_t* data, size_t n, bool ends_message) {
  if (!data_.empty()) {
    Item& back = data_.back();
    if (!back.tail && back.ends_message && ends_message && back.bytes.size() + n <= kBatchBytes) {
      const size_t before = back.bytes.size();
      copy_frames(back.bytes, data, n);
      add(queued_, back.bytes.size() - before);
      return;
    }
  }
  Item it;
  if (!spare_.empty()) {
    // A written batch's buffer: appending to it allocates nothing.
    it.bytes = std::move(spare_.back());
    spare_.pop_back();
    it.bytes.clear();
  }
  copy_frames(it.bytes, data, n);
  add(queued_, it.bytes.size());
  it.ends_message = ends_message;
  data_.push_back(std::move(it));
}

bool Channel::enqueue_locked(const uint8_t* data, size_t n) {
  if (closed_) return false;
  // Frames above a write slice are cut too: a control frame never waits
  // behind more than a slice.
  const size_t limit = std::min(max_frame_, kWriteSlice);
  if (n <= limit + wire::kFrameHeaderBytes) {
    // Every frame in so few bytes is within the limit.
    append_locked(data, n, true);
  } else {
    wire::split_frames(
        data, n, limit, [&](const uint8_t* p, size_t k) { append_locked(p, k, true); },
        [&](const std::array<uint8_t, wire::kFragmentOverhead>& head, const uint8_t* piece, size_t k, bool last) {
          Item it;
          it.bytes.reserve(head.size() + k + trailer_);
          it.bytes.assign(head.begin(), head.end());
          it.bytes.insert(it.bytes.end(), piece, piece + k);
          it.bytes.insert(it.bytes.end(), trailer_, uint8_t{0});  // room for the tag
          it.ends_message = last;  // no control frame between the pieces of one message
          add(queued_, it.bytes.size());
          data_.push_back(std::move(it));
        });
  }
  if (!needs_write_locked()) return false;
  flush_posted_ = true;
  return true;
}

uint64_t Channel::send(const uint8_t* data, size_t n) {
  std::unique_lock<std::mutex> lk(mu_);
  if (closed_) return kDropped;
  const bool wake = enqueue_locked(data, n);
  const uint64_t pos = queued_.load(std::memory_order_relaxed);
  lk.unlock();
  if (wake) schedule_write();
  return pos;
}

bool Channel::send_deferred(const uint8_t* data, size_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  return enqueue_locked(data, n);
}

uint64_t Channel::send_now(const uint8_t* data, size_t n) {
  std::unique_lock<std::mutex> lk(mu_);
  if (closed_) return kDropped;
  if (writing_ || flush_posted_ || !data_.empty() || !control_.empty() || n > std::min(max_frame_, kWriteSlice) + wire::kFrameHeaderBytes) {
    const bool wake = enqueue_locked(data, n);
    const uint64_t pos = queued_.load(std::memory_order_relaxed);
    lk.unlock();
    if (wake) schedule_write();
    return pos;
  }
  // Idle: write from this thread, holding the lock so that the I/O thread
  // cannot start a write meanwhile (nor compute tags: these frames come
  // next on the wire, so they are sealed here).
  if (send_mac_) {
    direct_.clear();
    append_with_tag_room(direct_, data, n);
    send_mac_->seal_frames(direct_.data(), direct_.size());
    data = direct_.data();
    n = direct_.size();
  }
  const ssize_t w = send_some(socket_.native_handle(), data, n);
  add(queued_, n);
  const uint64_t pos = queued_.load(std::memory_order_relaxed);
  if (w == static_cast<ssize_t>(n)) {
    add(written_, n);
    if (direct_.capacity() > kBatchBytes) std::vector<uint8_t>().swap(direct_);
    return pos;
  }
  // The rest (or all, after an error the I/O thread will report) goes first.
  const size_t done = w > 0 ? static_cast<size_t>(w) : 0;
  add(written_, done);
  Item it;
  it.bytes.assign(data + done, data + n);
  it.sealed = it.bytes.size();  // (when authenticated: tagged above)
  data_.push_front(std::move(it));
  resume_first_ = done > 0;
  flush_posted_ = true;
  lk.unlock();
  schedule_write();
  return pos;
}

uint64_t Channel::send_borrowed(const uint8_t* head, size_t head_len, const uint8_t* tail, size_t tail_len,
                                std::shared_ptr<const void> keep) {
  std::unique_lock<std::mutex> lk(mu_);
  if (closed_) return kDropped;
  Item it;
  it.bytes.assign(head, head + head_len);
  it.tail = tail;
  it.tail_len = tail_len;
  it.tag_len = trailer_;
  it.keep = std::move(keep);
  add(queued_, it.size());
  data_.push_back(std::move(it));
  const uint64_t pos = queued_.load(std::memory_order_relaxed);
  const bool wake = needs_write_locked();
  if (wake) flush_posted_ = true;
  lk.unlock();
  if (wake) schedule_write();
  return pos;
}

void Channel::send_control(const uint8_t* data, size_t n) {
  std::unique_lock<std::mutex> lk(mu_);
  if (closed_) return;
  if (!control_.empty()) {
    copy_frames(control_.back().bytes, data, n);
  } else {
    Item it;
    copy_frames(it.bytes, data, n);
    control_.push_back(std::move(it));
  }
  const bool wake = needs_write_locked();
  if (wake) flush_posted_ = true;
  lk.unlock();
  if (wake) schedule_write();
}

void Channel::schedule_write() {
  asio::post(socket_.get_executor(), [self = shared_from_this()] { self->start_write(); });
}

void Channel::start_write() {
  std::unique_lock<std::mutex> lk(mu_);
  flush_posted_ = false;
  if (writing_ || closed_ || (control_.empty() && data_.empty())) return;
  write_out(lk);
}

// Takes the next slice: the rest of a partly written frame, every control
// frame, then data up to the slice size (never stopping inside a fragmented
// message). Called with mu_ held; releases it.
void Channel::write_out(std::unique_lock<std::mutex>& lk) {
  writing_ = true;
  inflight_.clear();
  inflight_data_ = 0;
  auto take_data = [&] {
    inflight_data_ += data_.front().size();
    inflight_.push_back(std::move(data_.front()));
    data_.pop_front();
  };
  if (resume_first_) {
    take_data();
    resume_first_ = false;
  }
  while (!control_.empty()) {
    inflight_.push_back(std::move(control_.front()));
    control_.pop_front();
  }
  bool at_boundary = true;
  while (!data_.empty() && (inflight_data_ < kWriteSlice || !at_boundary)) {
    at_boundary = data_.front().ends_message;
    take_data();
  }
  buffers_.clear();
  for (const Item& it : inflight_) {
    if (!it.bytes.empty()) buffers_.emplace_back(it.bytes.data(), it.bytes.size());
    if (it.tail_len) buffers_.emplace_back(it.tail, it.tail_len);
    if (it.tag_len) buffers_.emplace_back(it.tag.data(), it.tag_len);
  }
  lk.unlock();
  // The tags, in wire order, outside the lock: inflight_ is the writer's
  // alone until on_written().
  if (send_mac_) {
    for (Item& it : inflight_) seal(it);
  }
  asio::async_write(socket_, buffers_,
                    [self = shared_from_this()](const std::error_code& ec, size_t) { self->on_written(ec); });
}

void Channel::on_written(const std::error_code& ec) {
  if (ec) {
    fail("write failed: " + ec.message());
    return;
  }
  std::vector<Item> done;
  std::unique_lock<std::mutex> lk(mu_);
  add(written_, inflight_data_);
  done.swap(inflight_);
  for (Item& it : done) {
    if (spare_.size() >= kSpareBuffers) break;
    if (!it.tail && it.bytes.capacity() >= 4096 && it.bytes.capacity() <= 2 * kBatchBytes) {
      spare_.push_back(std::move(it.bytes));
    }
  }
  writing_ = false;
  const bool notify = waiters_ > 0;
  if (!closed_ && (!control_.empty() || !data_.empty())) {
    write_out(lk);
  } else {
    lk.unlock();
  }
  if (notify) progress_.notify_all();
  // `done` releases borrowed buffers here, outside the lock.
}

// --- waiting ------------------------------------------------------------------------

Channel::Wait Channel::wait_pending_below(size_t limit, Clock::time_point deadline) {
  if (pending() <= limit) return Wait::kOk;
  std::unique_lock<std::mutex> lk(mu_);
  ++waiters_;
  const bool ok = progress_.wait_until(lk, deadline, [&] { return closed_ || pending() <= limit; });
  --waiters_;
  if (closed_) return Wait::kClosed;
  return ok ? Wait::kOk : Wait::kTimeout;
}

Channel::Wait Channel::wait_written(uint64_t position, Clock::time_point deadline) {
  if (written_.load(std::memory_order_relaxed) >= position) return Wait::kOk;
  std::unique_lock<std::mutex> lk(mu_);
  ++waiters_;
  const bool ok = progress_.wait_until(
      lk, deadline, [&] { return closed_ || written_.load(std::memory_order_relaxed) >= position; });
  --waiters_;
  if (written_.load(std::memory_order_relaxed) >= position) return Wait::kOk;
  if (closed_) return Wait::kClosed;
  return ok ? Wait::kOk : Wait::kTimeout;
}

bool Channel::flush_blocking(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::unique_lock<std::mutex> lk(mu_);
  const bool wake = (!data_.empty() || !control_.empty()) && needs_write_locked();
  if (wake) flush_posted_ = true;
  ++waiters_;
  lk.unlock();
  if (wake) schedule_write();
  lk.lock();
  const bool ok = progress_.wait_until(
      lk, deadline, [&] { return closed_ || (data_.empty() && control_.empty() && !writing_); });
  --waiters_;
  return ok && !closed_;
}

// --- reading ------------------------------------------------------------------------

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
  last_receive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  size_t need = 0;
  try {
    const size_t used = scanner_.scan(
        in_.data(), in_len_,
        [&](const wire::FrameView& f) {
          if (failed_) return;
          if (recv_mac_) recv_mac_->verify(f);
          if (auto whole = assembler_.feed(f)) handler_->on_frame(*whole);
        },
        &need);
    if (failed_) return;
    handler_->on_read_done();
    if (used) {
      std::memmove(in_.data(), in_.data() + used, in_len_ - used);
      in_len_ -= used;
    }
    if (need >= kDirectChunk && read_chunk_direct()) return;
  } catch (const ProtocolError& e) {
    fail(std::string("protocol error: ") + e.what());
    return;
  } catch (const std::exception& e) {
    // (Out of memory for what a peer announced, say: the peer goes, not us.)
    fail(std::string("cannot handle the peer's message: ") + e.what());
    return;
  }
  if (need > in_.size()) in_.resize(need);
  read_more();
}

bool Channel::read_chunk_direct() {
  if (in_len_ < wire::kChunkOverhead) return false;
  const auto type = static_cast<wire::MsgType>(in_[wire::kFrameHeaderBytes]);
  if (type != wire::MsgType::kPutData && type != wire::MsgType::kFetchData) return false;
  uint32_t frame_len;
  uint64_t id, offset, len;
  std::memcpy(&frame_len, in_.data(), 4);
  std::memcpy(&id, in_.data() + 5, 8);
  std::memcpy(&offset, in_.data() + 13, 8);
  std::memcpy(&len, in_.data() + 21, 8);
  // A chunk whose lengths disagree goes the usual way, to be refused there.
  if (uint64_t{frame_len} != wire::kChunkOverhead - wire::kFrameHeaderBytes + len) return false;
  uint8_t* dest = handler_->chunk_sink(type, id, offset, len);
  if (!dest) return false;
  // What is here: the header, part of the data, perhaps part of the tag.
  const size_t have = in_len_ - wire::kChunkOverhead;
  const size_t have_data = static_cast<size_t>(std::min<uint64_t>(have, len));
  const size_t have_tag = have - have_data;
  std::memcpy(dest, in_.data() + wire::kChunkOverhead, have_data);
  if (trailer_) {
    std::memcpy(chunk_head_.data(), in_.data(), wire::kChunkOverhead);
    std::memcpy(chunk_tag_.data(), in_.data() + wire::kChunkOverhead + have_data, have_tag);
  }
  in_len_ = 0;
  const std::array<asio::mutable_buffer, 2> rest{
      asio::buffer(dest + have_data, static_cast<size_t>(len) - have_data),
      asio::buffer(chunk_tag_.data() + have_tag, trailer_ - have_tag)};
  asio::async_read(socket_, rest,
                   [self = shared_from_this(), type, id, offset, len, dest](const std::error_code& ec, size_t) {
                     if (self->failed_) return;
                     if (ec) {
                       self->fail(ec == asio::error::eof ? std::string("connection closed by peer")
                                                         : "read failed: " + ec.message());
                       return;
                     }
                     self->last_receive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
                     try {
                       // Nothing read straight into place is handed on unverified.
                       if (self->recv_mac_) {
                         self->recv_mac_->verify(self->chunk_head_.data(), wire::kChunkOverhead, dest,
                                                 static_cast<size_t>(len), self->chunk_tag_.data());
                       }
                       self->handler_->on_chunk(type, id, offset, len);
                       self->handler_->on_read_done();
                     } catch (const ProtocolError& e) {
                       self->fail(std::string("protocol error: ") + e.what());
                       return;
                     } catch (const std::exception& e) {
                       self->fail(std::string("cannot handle the peer's message: ") + e.what());
                       return;
                     }
                     self->read_more();
                   });
  return true;
}

void Channel::close(const std::string& reason) { fail(reason); }

void Channel::fail(const std::string& reason) {
  if (failed_) return;
  failed_ = true;
  {
    std::lock_guard<std::mutex> lk(mu_);
    closed_ = true;
  }
  progress_.notify_all();
  std::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_both, ignored);
  socket_.close(ignored);
  handler_->on_closed(reason);
}

}  // namespace cox::transport
