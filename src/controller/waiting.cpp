// Sending with backpressure, and waiting: sync, ping, requests and their
// replies. Callers' threads, but for on_reply (I/O thread).
//
// Backpressure: sends never block; a caller whose worker has more than
// send_buffer_bytes queued waits here for room, up to its deadline, and a
// tensor streamed from borrowed memory waits until it is written. The
// error names the worker and the bytes still pending.
#include "controller/controller_impl.hpp"
#include "controller/waiting.hpp"

#include <asio/post.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace cox {

using std::chrono::milliseconds;

namespace {

std::string mib(size_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

std::optional<Controller::Impl::Clock::time_point> deadline_of(std::optional<milliseconds> timeout) {
  if (!timeout) return std::nullopt;
  return Controller::Impl::Clock::now() + *timeout;
}

}  // namespace

void Controller::Impl::rethrow_first_error(std::unique_lock<std::mutex>&) {
  if (auto e = errors_.take()) std::rethrow_exception(e);
}

void Controller::Impl::wake(std::vector<std::shared_ptr<transport::Channel>>& channels) {
  if (channels.empty()) return;
  asio::post(io_, [cs = std::move(channels)] {
    for (auto& c : cs) c->start_write();
  });
  channels.clear();
}

// --- backpressure ----------------------------------------------------------------

void Controller::Impl::send_timed_out(const Worker& w, const char* what, Clock::duration waited) {
  throw Timeout(fmt::format("{}: worker {} has {} queued and unwritten after {} ms (it is not reading: busy, paused, "
                            "or its link is down)",
                            what, w.rank, mib(w.channel->pending()),
                            std::chrono::duration_cast<milliseconds>(waited).count()));
}

void Controller::Impl::wait_for_room(Worker& w, Clock::time_point deadline, const char* what) {
  const auto t0 = Clock::now();
  switch (w.channel->wait_pending_below(opts_.send_buffer_bytes, deadline)) {
    case transport::Channel::Wait::kOk: return;
    case transport::Channel::Wait::kTimeout: send_timed_out(w, what, Clock::now() - t0);
    case transport::Channel::Wait::kClosed: break;
  }
  // Closed: the loss is being recorded (for a local worker, once its exit
  // status is in).
  await_loss({w.rank}, opts_.heartbeat_timeout);
  throw WorkerLost(w.rank, "connection closed");
}

void Controller::Impl::make_room(const std::vector<int>& ranks, const char* what) {
  std::optional<Clock::time_point> deadline;
  for (int r : ranks) {
    Worker& w = worker(r);
    if (w.lost_flag.load(std::memory_order_relaxed)) throw_lost(r);
    if (w.channel->pending() <= opts_.send_buffer_bytes) continue;
    if (!deadline) deadline = Clock::now() + opts_.send_timeout;
    wait_for_room(w, *deadline, what);
  }
}

void Controller::Impl::send(const Send* sends, size_t n) {
  Batch batch(*this);
  for (size_t i = 0; i < n; ++i) batch.add(sends[i].rank, sends[i].data, sends[i].size);
}

void Controller::Impl::post_now(int rank, const std::vector<uint8_t>& bytes) {
  Worker& w = worker(rank);
  if (w.lost_flag.load(std::memory_order_relaxed)) throw_lost(rank);
  w.channel->send_now(bytes);
}

uint64_t Controller::Impl::post_tensor(int rank, const wire::Put& put, const uint8_t* data,
                                       std::shared_ptr<const void> keep) {
  Worker& w = worker(rank);
  if (w.lost_flag.load(std::memory_order_relaxed)) throw_lost(rank);
  uint64_t pos = w.channel->send(wire::encode_frame(put));
  const size_t chunk = wire::chunk_bytes(w.channel->max_frame());
  for (uint64_t off = 0; off < put.nbytes; off += chunk) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(chunk, put.nbytes - off));
    std::array<uint8_t, wire::kChunkOverhead> head;
    wire::chunk_header(head, wire::MsgType::kPutData, put.id, off, k);
    // Borrowed, not copied: the caller waits for the position returned.
    pos = w.channel->send_borrowed(head.data(), head.size(), data + off, k, keep);
  }
  return pos;
}

void Controller::Impl::wait_sent(int rank, uint64_t position, const char* what) {
  Worker& w = worker(rank);
  const auto t0 = Clock::now();
  switch (w.channel->wait_written(position, t0 + opts_.send_timeout)) {
    case transport::Channel::Wait::kOk: return;
    case transport::Channel::Wait::kTimeout: send_timed_out(w, what, Clock::now() - t0);
    case transport::Channel::Wait::kClosed: break;
  }
  await_loss({rank}, opts_.heartbeat_timeout);
  throw WorkerLost(rank, "connection closed");
}

// --- sync and ping -----------------------------------------------------------------

void Controller::Impl::sync(std::optional<milliseconds> timeout) {
  std::vector<int> all(static_cast<size_t>(size()));
  for (int r = 0; r < size(); ++r) all[static_cast<size_t>(r)] = r;
  sync_ranks(all, timeout);
}

void Controller::Impl::sync_ranks(const std::vector<int>& ranks, std::optional<milliseconds> timeout) {
  const auto deadline = deadline_of(timeout);
  const uint64_t id = ++next_id_;
  const auto frame = wire::encode_frame(wire::Sync{id});
  for (int r : ranks) post_now(r, frame);
  std::unique_lock<std::mutex> lk(mu_);
  auto done = [&] {
    for (int r : ranks) {
      if (workers_[static_cast<size_t>(r)]->synced < id) return false;
    }
    return true;
  };
  if (!wait_for(lk, deadline, ranks, done)) {
    std::vector<std::string> behind;
    for (int r : ranks) {
      const Worker& w = *workers_[static_cast<size_t>(r)];
      if (w.synced >= id) continue;
      const size_t pending = w.channel->pending();
      behind.push_back(pending ? fmt::format("{} ({} not yet sent to it)", r, mib(pending)) : std::to_string(r));
    }
    throw Timeout(fmt::format("sync: worker{} [{}] did not finish within {} ms", behind.size() == 1 ? "" : "s",
                              fmt::join(behind, ", "), timeout->count()));
  }
  rethrow_first_error(lk);
}

std::chrono::nanoseconds Controller::Impl::ping(int rank, std::optional<milliseconds> timeout) {
  Worker& w = worker(rank);
  const auto deadline = deadline_of(timeout);
  const uint64_t id = ++next_id_;
  wire::Echo echo;
  echo.id = id;
  const auto t0 = Clock::now();
  post_now(rank, wire::encode_frame(echo));
  std::unique_lock<std::mutex> lk(mu_);
  if (!wait_for(lk, deadline, {rank}, [&] { return w.echoed >= id; })) {
    const size_t pending = w.channel->pending();
    throw Timeout(fmt::format("ping: worker {} did not answer within {} ms{}", rank, timeout->count(),
                              pending ? fmt::format(" ({} not yet sent to it)", mib(pending)) : std::string()));
  }
  const auto dt = Clock::now() - t0;
  rethrow_first_error(lk);
  return dt;
}

// --- requests and replies ------------------------------------------------------------

void Controller::Impl::on_reply(uint64_t request, Reply reply) {
  std::lock_guard<std::mutex> lk(mu_);
  if (forgotten_.erase(request)) return;
  replies_.insert_or_assign(request, std::move(reply));
}

Controller::Impl::Reply Controller::Impl::wait_reply(int rank, uint64_t request, std::optional<milliseconds> timeout) {
  Worker& w = worker(rank);
  std::unique_lock<std::mutex> lk(mu_);
  if (!wait_for(lk, deadline_of(timeout), {rank}, [&] { return replies_.count(request) != 0; })) {
    const size_t pending = w.channel->pending();
    throw Timeout(fmt::format("worker {} did not answer request {} within {} ms{}", rank, request, timeout->count(),
                              pending ? fmt::format(" ({} not yet sent to it)", mib(pending)) : std::string()));
  }
  auto it = replies_.find(request);
  Reply r = std::move(it->second);
  replies_.erase(it);
  return r;
}

void Controller::Impl::forget(int rank, uint64_t request) noexcept {
  std::lock_guard<std::mutex> lk(mu_);
  if (replies_.erase(request)) return;
  // A lost worker answers nothing more: nothing to wait for.
  if (rank >= 0 && rank < size() && workers_[static_cast<size_t>(rank)]->lost) return;
  try {
    forgotten_.emplace(request, rank);
  } catch (...) {
  }
}

size_t Controller::Impl::held_replies() const {
  std::lock_guard<std::mutex> lk(mu_);
  return replies_.size() + forgotten_.size();
}

}  // namespace cox
