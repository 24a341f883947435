// A worker's executor in process, for the fuzz harness and the unit tests:
// its channel writes to one end of a socket pair whose other end is read
// back here, and its communicators are a loopback that checks every
// pointer, count, root and peer the worker hands it.
#pragma once

#include "transport/channel.hpp"
#include "worker/executor.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace cox::fuzz {

using collectives::DataType;
using namespace cox::wire;

[[noreturn]] inline void bug(const std::string& why) {
  std::fprintf(stderr, "worker_fuzz: %s\n", why.c_str());
  std::abort();
}

// A communicator whose members all hold what this one holds: it reads and
// writes exactly the bytes the interface says, so that a wrong count or
// pointer shows up under the address sanitizer, and it refuses a root or
// peer out of range.
class Loopback final : public collectives::Communicator {
 public:
  Loopback(int rank, int size) : Communicator(rank, size) {}
  const char* backend() const noexcept override { return "loopback"; }

  void all_reduce(const void* in, void* out, size_t count, DataType t, collectives::ReduceOp op) override {
    if (static_cast<uint8_t>(op) > collectives::kMaxReduceOp) bug("all_reduce with an unknown reduce op");
    move(out, in, bytes(count, t));
  }
  void reduce_scatter(const void* in, void* out, size_t count, DataType t, collectives::ReduceOp op) override {
    if (static_cast<uint8_t>(op) > collectives::kMaxReduceOp) bug("reduce_scatter with an unknown reduce op");
    const size_t b = bytes(count, t);
    read(in, b * static_cast<size_t>(size_));
    move(out, static_cast<const uint8_t*>(in) + b * static_cast<size_t>(rank_), b);
  }
  void all_gather(const void* in, void* out, size_t count, DataType t) override {
    const size_t b = bytes(count, t);
    for (int i = 0; i < size_; ++i) move(static_cast<uint8_t*>(out) + b * static_cast<size_t>(i), in, b);
  }
  void all_to_all(const void* in, void* out, size_t count, DataType t) override {
    move(out, in, bytes(count, t) * static_cast<size_t>(size_));
  }
  void broadcast(const void* in, void* out, size_t count, DataType t, int root) override {
    if (root < 0 || root >= size_) bug("broadcast from root " + std::to_string(root) + " of " + std::to_string(size_));
    move(out, in, bytes(count, t));
  }
  void barrier() override {}

  struct Done final : Transfer {
    void wait() override {}
  };
  std::unique_ptr<Transfer> start_send(const void* data, size_t n, int peer, uint64_t tag) override {
    check_peer(peer);
    const auto* p = static_cast<const uint8_t*>(data);
    sent_[tag].emplace_back(p, p + n);
    return std::make_unique<Done>();
  }
  // What was sent with this tag (this rank plays every peer), else zeros.
  std::unique_ptr<Transfer> start_recv(void* data, size_t n, int peer, uint64_t tag) override {
    check_peer(peer);
    if (n) std::memset(data, 0, n);
    auto it = sent_.find(tag);
    if (it != sent_.end() && !it->second.empty()) {
      const auto& b = it->second.front();
      move(data, b.data(), std::min(n, b.size()));
      it->second.pop_front();
    }
    return std::make_unique<Done>();
  }
  struct Statuses final : StatusExchange {
    Statuses(int n, uint8_t mine) : all(static_cast<size_t>(n), mine) {}
    std::vector<uint8_t> finish() override { return all; }
    std::vector<uint8_t> all;
  };
  std::unique_ptr<StatusExchange> start_status_exchange(uint8_t mine) override {
    return std::make_unique<Statuses>(size_, mine);
  }

 private:
  // An empty tensor's data pointer may be null: nothing to move then.
  static void move(void* out, const void* in, size_t n) {
    if (n) std::memmove(out, in, n);
  }
  static size_t bytes(size_t count, DataType t) {
    const size_t b = count * collectives::element_size(t);
    if (b > (size_t{64} << 20)) bug("a collective of " + std::to_string(b) + " bytes");
    return b;
  }
  static void read(const void* p, size_t n) {
    static std::vector<uint8_t> scratch;
    scratch.resize(n);
    move(scratch.data(), p, n);
  }
  void check_peer(int peer) const {
    if (peer < 0 || peer >= size_) bug("a transfer with peer " + std::to_string(peer) + " of " + std::to_string(size_));
  }
  std::map<uint64_t, std::deque<std::vector<uint8_t>>> sent_;
};

// The worker's replies, read back from the other end of its socket: each
// must decode as a message for the controller.
struct Replies {
  template <class M>
  void on(const M&) {}
};

struct NoHandler final : transport::Channel::Handler {
  void on_frame(const FrameView&) override {}
  void on_closed(const std::string&) override {}
};

// One socket pair and channel for the whole run; a fresh executor per input.
struct Transport {
  Transport() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) bug("socketpair failed");
    peer = fds[1];
    ::fcntl(peer, F_SETFL, O_NONBLOCK);
    transport::Socket s(io);
    s.assign(asio::generic::stream_protocol(AF_UNIX, 0), fds[0]);
    channel = std::make_shared<transport::Channel>(std::move(s), kMaxFrame, &handler);
    outbox.emplace(*channel, std::chrono::milliseconds(1000));
    reader.emplace(-1, kMaxFrame);
  }
  static constexpr size_t kMaxFrame = wire::kMinMaxFrame;

  // Lets the channel write, and calls f(FrameView) with each whole reply.
  template <class F>
  void drain(F&& f) {
    for (int i = 0; i < 64; ++i) {
      io.restart();
      const size_t ran = io.poll();
      uint8_t chunk[1 << 16];
      ssize_t n;
      bool got = false;
      while ((n = ::read(peer, chunk, sizeof chunk)) > 0) {
        buf.insert(buf.end(), chunk, chunk + n);
        got = true;
      }
      if (!ran && !got && channel->pending() == 0) break;
    }
    const size_t used = FrameScanner(kMaxFrame).scan(buf.data(), buf.size(), [&](const FrameView& fr) {
      if (auto whole = assembler.feed(fr)) f(*whole);
    });
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
  }
  // drain(), where every reply must decode as a message for the controller.
  void drain_checked() {
    try {
      drain([](const FrameView& f) { dispatch<Dir::kToController>(f, Replies{}); });
    } catch (const ProtocolError& e) {
      bug(std::string("the worker sent a reply that does not decode: ") + e.what());
    }
  }

  asio::io_context io;
  NoHandler handler;
  std::shared_ptr<transport::Channel> channel;
  std::optional<worker::Outbox> outbox;
  std::optional<worker::StreamReader> reader;
  int peer = -1;
  std::vector<uint8_t> buf;
  Assembler assembler;
};

}  // namespace cox::fuzz
