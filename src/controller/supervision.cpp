// Supervision: the messages workers send (I/O thread), heartbeats both
// ways, and loss: a closed connection, a dead process, or silence.
#include "controller/controller_impl.hpp"

#include "controller/launcher.hpp"

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace cox {

using std::chrono::milliseconds;

// What a worker's frames do on the controller: one on() per message
// addressed to it (wire::dispatch checks that at compile time).
struct Controller::Impl::Inbound {
  Impl& impl;
  Worker& w;

  // Its arrival is what counts for liveness; a worker's also says what it
  // is doing.
  void on(const wire::Heartbeat& m) {
    const auto limit = impl.opts_.op_timeout;
    bool over;
    {
      std::lock_guard<std::mutex> lk(impl.mu_);
      w.progress = m;
      over = limit.count() > 0 && m.busy && m.busy_ms > limit.count() && w.op_timeout_seen != m.started;
      if (over) w.op_timeout_seen = m.started;
    }
    if (over) impl.on_op_timeout(w, m);
  }
  void on(const wire::SyncDone& m) {
    std::lock_guard<std::mutex> lk(impl.mu_);
    w.synced = m.id;
    w.wake = true;
  }
  void on(const wire::EchoReply& m) {
    std::lock_guard<std::mutex> lk(impl.mu_);
    w.echoed = m.id;
    w.wake = true;
  }
  void on(const wire::Error& m) {
    std::lock_guard<std::mutex> lk(impl.mu_);
    impl.errors_.add(m.value, std::make_exception_ptr(RemoteError(w.rank, m.op, m.message)));
    w.wake = true;
  }
  void on(const wire::Log& m) {
    std::string line = m.line;
    line.push_back('\n');
    impl.on_output(w, m.stream == wire::Stream::kStderr, line.data(), line.size(), false);
  }
  void on(const wire::Rendezvous& m) { impl.on_rendezvous(w, m); }

  // A fetch: its header, then its bytes, straight into the result.
  void on(const wire::FetchReply& m) {
    if (w.incoming.count(m.request)) {
      throw ProtocolError(fmt::format("worker {} answered fetch request {} twice", w.rank, m.request));
    }
    bool drop;
    {
      std::lock_guard<std::mutex> lk(impl.mu_);
      drop = impl.forgotten_.count(m.request) != 0;
    }
    Worker::Incoming in;
    in.nbytes = m.nbytes;
    if (!drop) {
      if (m.meta.dtype >= static_cast<uint8_t>(at::ScalarType::NumOptions)) {
        throw ProtocolError(fmt::format("fetch reply from worker {}: unknown dtype {}", w.rank, m.meta.dtype));
      }
      const auto dtype = static_cast<at::ScalarType>(m.meta.dtype);
      // The size the metadata implies, checked before it allocates anything.
      uint64_t expect = 0;
      bool bad = dtype == at::ScalarType::Undefined;
      if (!bad) {
        expect = c10::elementSize(dtype);
        for (const int64_t d : m.meta.sizes) {
          if (d < 0 || (d != 0 && expect > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / static_cast<uint64_t>(d))) {
            bad = true;
            break;
          }
          expect *= static_cast<uint64_t>(d);
        }
        if (std::find(m.meta.sizes.begin(), m.meta.sizes.end(), 0) != m.meta.sizes.end()) expect = 0;
      }
      if (bad || expect != m.nbytes) {
        throw ProtocolError(fmt::format("fetch reply from worker {}: {} bytes announced for a {} tensor of sizes [{}]",
                                        w.rank, m.nbytes, c10::toString(dtype), fmt::join(m.meta.sizes, ", ")));
      }
      try {
        in.value = at::empty(m.meta.sizes, at::TensorOptions().dtype(dtype));
      } catch (const std::exception& e) {
        throw ProtocolError(fmt::format("fetch reply from worker {}: bad tensor metadata: {}", w.rank, e.what()));
      }
      if (static_cast<uint64_t>(in.value.nbytes()) != m.nbytes) {
        throw ProtocolError(fmt::format("fetch reply from worker {}: {} bytes announced for a {} tensor of {} bytes",
                                        w.rank, m.nbytes, c10::toString(dtype), in.value.nbytes()));
      }
    }
    if (m.nbytes == 0) return finish(m.request, std::move(in));
    w.incoming.emplace(m.request, std::move(in));
  }
  void on(const wire::FetchData& m) {
    auto it = w.incoming.find(m.request);
    if (it == w.incoming.end()) {
      throw ProtocolError(fmt::format("worker {} sent data for fetch request {}, which is not being received", w.rank,
                                      m.request));
    }
    Worker::Incoming& in = it->second;
    if (m.offset != in.received || m.data.size > in.nbytes - in.received) {
      throw ProtocolError(fmt::format("worker {} sent bytes [{}, {}) of fetch request {} where [{}, {}) was due",
                                      w.rank, m.offset, m.offset + m.data.size, m.request, in.received, in.nbytes));
    }
    if (in.value.defined()) {
      std::memcpy(static_cast<uint8_t*>(in.value.data_ptr()) + m.offset, m.data.data, m.data.size);
    }
    received(it, m.data.size);
  }
  // Bytes of a fetch are in place.
  void received(std::unordered_map<uint64_t, Worker::Incoming>::iterator it, uint64_t n) {
    Worker::Incoming& in = it->second;
    in.received += n;
    if (in.received < in.nbytes) return;
    const uint64_t request = it->first;
    Worker::Incoming done = std::move(in);
    w.incoming.erase(it);
    finish(request, std::move(done));
  }
  void finish(uint64_t request, Worker::Incoming in) {
    if (in.value.defined()) {
      impl.on_reply(request, Fetched{std::move(in.value)});
    } else {
      impl.on_reply(request, wire::Done{request});  // forgotten: on_reply drops it
    }
    w.wake = true;
  }

  void on(const wire::MetaReply& m) { reply(m.request, m); }
  void on(const wire::StatsReply& m) { reply(m.request, m); }
  void on(const wire::Done& m) { reply(m.request, m); }
  void on(const wire::Failed& m) { reply(m.request, m); }
  template <class M>
  void reply(uint64_t request, const M& m) {
    impl.on_reply(request, m);
    w.wake = true;
  }
};

void Controller::Impl::Worker::on_frame(const wire::FrameView& f) {
  wire::dispatch<wire::Dir::kToController>(f, Inbound{impl, *this});
}

// A large FetchData chunk is read by the channel straight into the result,
// when it is the one due.
uint8_t* Controller::Impl::Worker::chunk_sink(wire::MsgType type, uint64_t request, uint64_t offset, uint64_t len) {
  if (type != wire::MsgType::kFetchData) return nullptr;
  auto it = incoming.find(request);
  if (it == incoming.end()) return nullptr;
  Incoming& in = it->second;
  if (!in.value.defined() || offset != in.received || len > in.nbytes - in.received) return nullptr;
  return static_cast<uint8_t*>(in.value.data_ptr()) + offset;
}

void Controller::Impl::Worker::on_chunk(wire::MsgType, uint64_t request, uint64_t, uint64_t len) {
  Inbound{impl, *this}.received(incoming.find(request), len);
}

void Controller::Impl::Worker::on_read_done() {
  if (!wake) return;
  wake = false;
  impl.events_.fetch_add(1, std::memory_order_release);
  impl.cv_.notify_all();
}

void Controller::Impl::on_closed(Worker& w, const std::string& reason) {
  w.incoming.clear();  // fetches half received: their requests fail with the worker
  bool expected;
  {
    std::lock_guard<std::mutex> lk(mu_);
    expected = shutting_down_ || w.exited;
  }
  if (expected) {
    cv_.notify_all();
    return;
  }
  if (w.pid > 0) {
    // A local worker's exit status says more than the closed socket: give
    // the child a moment to be reaped (by its watcher) before declaring it
    // lost without one.
    w.grace_timer.expires_after(milliseconds(2000));
    w.grace_timer.async_wait([this, &w, reason](const std::error_code& ec) {
      if (ec) return;
      mark_lost(w, "connection lost (" + reason + ") and the process did not exit; killed it");
      kill_child(w);
    });
    return;
  }
  mark_lost(w, "connection lost: " + reason);
}

void Controller::Impl::on_op_timeout(Worker& w, const wire::Heartbeat& m) {
  const std::string what =
      fmt::format("{} (message {}) has run for {} ms, longer than op_timeout ({} ms)", m.doing, m.started, m.busy_ms,
                  opts_.op_timeout.count());
  if (!opts_.op_timeout_loses_worker) {
    const std::string line = "cox: op_timeout: worker " + std::to_string(w.rank) + ": " + what;
    opts_.output_sink(w.rank, OutputStream::kStderr, line);
    return;
  }
  mark_lost(w, what);
  kill_child(w);
  w.channel->close("op_timeout");
}

void Controller::Impl::mark_lost(Worker& w, const std::string& reason) {
  std::vector<std::pair<int, std::vector<uint8_t>>> replies;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (w.lost) return;
    w.lost = std::make_exception_ptr(
        WorkerLost(w.rank, reason, std::vector<std::string>(w.last_stderr.begin(), w.last_stderr.end())));
    w.lost_flag.store(true);
    // Replies it will never send are not waited for.
    for (auto it = forgotten_.begin(); it != forgotten_.end();) {
      it = it->second == w.rank ? forgotten_.erase(it) : std::next(it);
    }
    // No communicator that needs this worker can form now.
    for (auto& [comm, r] : rendezvous_) {
      if (std::find(r.ranks.begin(), r.ranks.end(), w.rank) != r.ranks.end()) {
        fail_rendezvous_locked(comm, fmt::format("worker {} was lost before it joined: {}", w.rank, reason), replies);
      }
    }
  }
  send_replies(replies);
  // The survivors abort every communicator it belongs to, at once (their
  // I/O threads act on it even inside a collective): none waits for it
  // until collective_timeout.
  const auto notice = wire::encode_frame(wire::PeerLost{w.rank, reason});
  for (auto& other : workers_) {
    if (other.get() == &w || !other->channel || other->lost_flag.load() || other->channel->closed()) continue;
    other->channel->send_control(notice);
  }
  events_.fetch_add(1, std::memory_order_release);
  cv_.notify_all();
}


void Controller::Impl::await_loss(const std::vector<int>& ranks, std::chrono::milliseconds limit) {
  std::unique_lock<std::mutex> lk(mu_);
  auto lost = [&]() -> std::exception_ptr {
    for (int r : ranks) {
      if (r >= 0 && r < size() && workers_[static_cast<size_t>(r)]->lost) return workers_[static_cast<size_t>(r)]->lost;
    }
    return nullptr;
  };
  cv_.wait_for(lk, limit, [&] { return lost() != nullptr || shut_down_; });
  if (auto e = lost()) std::rethrow_exception(e);
}

void Controller::Impl::start_heartbeats() {
  heartbeat_timer_.expires_after(opts_.heartbeat_interval);
  heartbeat_timer_.async_wait([this](const std::error_code& ec) {
    if (!ec) on_heartbeat_timer();
  });
}

void Controller::Impl::on_heartbeat_timer() {
  const auto now = Clock::now();
  for (auto& w : workers_) {
    if (!w->channel || w->lost_flag.load() || w->channel->closed()) continue;
    // On the control lane: ahead of any data backlog, and never waiting.
    w->channel->send_control(heartbeat_frame_);
    const auto silent = std::chrono::duration_cast<milliseconds>(now - w->channel->last_receive());
    if (silent > opts_.heartbeat_timeout) {
      mark_lost(*w, fmt::format("no message or heartbeat for {} ms (heartbeat_timeout {} ms)", silent.count(),
                                opts_.heartbeat_timeout.count()));
      kill_child(*w);
      w->channel->close("heartbeat timeout");
    }
  }
  start_heartbeats();
}

void Controller::Impl::bad_rank(int rank) const {
  throw InvalidArgument(fmt::format("worker rank {} out of range for {} workers", rank, size()));
}

void Controller::Impl::throw_lost(int rank) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::rethrow_exception(workers_[static_cast<size_t>(rank)]->lost);
}

}  // namespace cox
