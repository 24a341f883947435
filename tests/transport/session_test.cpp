// Authenticated sessions in process: the per-frame tags (transport/session_mac)
// and two Channels over TCP loopback tagging and checking every kind of send,
// from several threads at once, in wire order.
#include "transport/channel.hpp"
#include "transport/session_mac.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

using namespace cox;
using namespace cox::transport;
using namespace std::chrono_literals;

namespace {

wire::Nonce nonce(uint8_t v) {
  wire::Nonce n;
  n.fill(v);
  return n;
}

std::vector<uint8_t> sealed(FrameMac& mac, const std::vector<uint8_t>& frames) {
  std::vector<uint8_t> out;
  append_with_tag_room(out, frames.data(), frames.size());
  mac.seal_frames(out.data(), out.size());
  return out;
}

void require_auth_failure(const std::function<void()>& f) {
  try {
    f();
    FAIL("expected an authentication failure");
  } catch (const ProtocolError& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("authentication failed"));
  }
}

}  // namespace

TEST_CASE("session keys differ per direction, per connection and per token", "[auth]") {
  const std::string token = "a-token-of-at-least-16-bytes";
  const SessionKeys c = derive_session_keys(token, nonce(1), nonce(2), 0, Side::kController);
  const SessionKeys w = derive_session_keys(token, nonce(1), nonce(2), 0, Side::kWorker);
  REQUIRE(c.send == w.recv);
  REQUIRE(c.recv == w.send);
  REQUIRE(c.send != c.recv);
  REQUIRE(derive_session_keys(token, nonce(1), nonce(3), 0, Side::kController).send != c.send);
  REQUIRE(derive_session_keys(token, nonce(1), nonce(2), 1, Side::kController).send != c.send);
  REQUIRE(derive_session_keys(token + "x", nonce(1), nonce(2), 0, Side::kController).send != c.send);
}

TEST_CASE("a frame verifies once, in its place, unaltered, under its direction's key", "[auth]") {
  const SessionKeys c = derive_session_keys("a-token-of-at-least-16-bytes", nonce(1), nonce(2), 0, Side::kController);
  const SessionKeys w = derive_session_keys("a-token-of-at-least-16-bytes", nonce(1), nonce(2), 0, Side::kWorker);
  FrameMac send(c.send, 0);
  std::vector<uint8_t> frames = wire::encode_frame(wire::Seq{1});
  wire::encode_frame(wire::Echo{7, "payload"}, frames);
  const std::vector<uint8_t> bytes = sealed(send, frames);
  wire::FrameScanner scanner(4096, kTagBytes);
  auto frames_of = [&](const std::vector<uint8_t>& b) {
    std::vector<wire::FrameView> out;
    REQUIRE(scanner.scan(b.data(), b.size(), [&](const wire::FrameView& f) { out.push_back(f); }) == b.size());
    return out;
  };
  const auto views = frames_of(bytes);
  REQUIRE(views.size() == 2);
  REQUIRE(views[1].type == wire::MsgType::kEcho);

  SECTION("in order: accepted") {
    FrameMac recv(w.recv, 0);
    recv.verify(views[0]);
    recv.verify(views[1]);
    REQUIRE(recv.seq() == 2);
  }
  SECTION("replayed") {
    FrameMac recv(w.recv, 0);
    recv.verify(views[0]);
    require_auth_failure([&] { recv.verify(views[0]); });
  }
  SECTION("reordered, or after a gap") {
    FrameMac recv(w.recv, 0);
    require_auth_failure([&] { recv.verify(views[1]); });
  }
  SECTION("altered") {
    std::vector<uint8_t> copy = bytes;
    copy[copy.size() - kTagBytes - 2] ^= 0x20;
    FrameMac recv(w.recv, 0);
    const auto altered = frames_of(copy);
    recv.verify(altered[0]);
    require_auth_failure([&] { recv.verify(altered[1]); });
  }
  SECTION("reflected: the other direction's key") {
    FrameMac recv(c.recv, 0);
    require_auth_failure([&] { recv.verify(views[0]); });
  }
  SECTION("split in two pieces: the same tag") {
    FrameMac recv(w.recv, 0);
    const uint8_t* start = views[0].payload - wire::kFrameHeaderBytes - 1;
    const size_t len = views[0].size + wire::kFrameHeaderBytes + 1;
    recv.verify(start, 3, start + 3, len - 3, views[0].payload + views[0].size);
  }
}

namespace {

// A connected TCP pair on loopback.
std::pair<int, int> tcp_pair() {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  REQUIRE(::listen(lfd, 1) == 0);
  int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  int s = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
  REQUIRE(s >= 0);
  ::close(lfd);
  return {c, s};
}

struct Receiver final : Channel::Handler {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t next_seq = 0;
  size_t heartbeats = 0, echoes = 0, big_echoes = 0, chunks = 0, direct_chunks = 0;
  bool out_of_order = false;
  std::string closed;
  std::vector<uint8_t> sink = std::vector<uint8_t>(512 * 1024);

  void on_frame(const wire::FrameView& f) override {
    std::lock_guard<std::mutex> lk(mu);
    switch (f.type) {
      case wire::MsgType::kSeq:
        out_of_order = out_of_order || wire::decode<wire::Seq>(f).n != next_seq;
        ++next_seq;
        break;
      case wire::MsgType::kHeartbeat: ++heartbeats; break;
      case wire::MsgType::kEcho: {
        const auto e = wire::decode<wire::Echo>(f);
        if (e.payload.size() > 1000) {
          ++big_echoes;
          out_of_order = out_of_order || e.payload != std::string(e.payload.size(), 'b');
        } else {
          ++echoes;
        }
        break;
      }
      case wire::MsgType::kFetchData: ++chunks; break;  // (a small piece)
      default: break;
    }
    cv.notify_all();
  }
  uint8_t* chunk_sink(wire::MsgType, uint64_t, uint64_t, uint64_t len) override {
    return len == sink.size() ? sink.data() : nullptr;
  }
  void on_chunk(wire::MsgType, uint64_t, uint64_t, uint64_t) override {
    std::lock_guard<std::mutex> lk(mu);
    ++chunks;
    ++direct_chunks;
    cv.notify_all();
  }
  void on_closed(const std::string& reason) override {
    std::lock_guard<std::mutex> lk(mu);
    closed = reason.empty() ? "closed" : reason;
    cv.notify_all();
  }
};

struct Quiet final : Channel::Handler {
  void on_frame(const wire::FrameView&) override {}
  void on_closed(const std::string&) override {}
};

}  // namespace

TEST_CASE("authenticated channels tag and check every kind of send, in wire order", "[auth]") {
  const std::string token = "a-token-of-at-least-16-bytes";
  const SessionKeys ck = derive_session_keys(token, nonce(4), nonce(5), 0, Side::kController);
  const SessionKeys wk = derive_session_keys(token, nonce(4), nonce(5), 0, Side::kWorker);
  asio::io_context io;
  auto work = asio::make_work_guard(io);
  auto [a_fd, b_fd] = tcp_pair();
  REQUIRE(session_authenticated(a_fd));
  Socket a(io), b(io);
  a.assign(asio::generic::stream_protocol(AF_INET, IPPROTO_TCP), a_fd);
  b.assign(asio::generic::stream_protocol(AF_INET, IPPROTO_TCP), b_fd);
  Quiet quiet;
  Receiver rx;
  const size_t max_frame = 1 << 20;  // a 3 MiB message goes in fragments
  auto sender = std::make_shared<Channel>(std::move(a), max_frame, &quiet, &ck);
  auto receiver = std::make_shared<Channel>(std::move(b), max_frame, &rx, &wk);
  asio::post(io, [&] { receiver->start(); });
  std::thread io_thread([&] { io.run(); });

  constexpr uint64_t kSeqs = 20000;
  constexpr size_t kControl = 500, kNow = 500, kBig = 3, kChunks = 20;
  const std::string big(3 << 20, 'b');
  auto chunk_data = std::make_shared<std::vector<uint8_t>>(rx.sink.size(), 0xab);
  // Data frames in batches from one thread; control frames, direct sends,
  // borrowed chunks and fragmented messages from another, all at once.
  std::thread data([&] {
    std::vector<uint8_t> batch;
    for (uint64_t i = 0; i < kSeqs;) {
      batch.clear();
      for (int k = 0; k < 50 && i < kSeqs; ++k) wire::encode_frame(wire::Seq{i++}, batch);
      sender->send(batch);
    }
  });
  std::thread other([&] {
    for (size_t i = 0; i < kControl; ++i) {
      sender->send_control(wire::encode_frame(wire::Heartbeat{}));
      if (i < kNow) sender->send_now(wire::encode_frame(wire::Echo{i, "now"}));
      if (i % (kControl / kChunks) == 0) {
        std::array<uint8_t, wire::kChunkOverhead> head;
        wire::chunk_header(head, wire::MsgType::kFetchData, 1, 0, chunk_data->size());
        sender->send_borrowed(head.data(), head.size(), chunk_data->data(), chunk_data->size(), chunk_data);
      }
      if (i % (kControl / kBig) == 0 && i / (kControl / kBig) < kBig) sender->send(wire::encode_frame(wire::Echo{0, big}));
    }
  });
  data.join();
  other.join();
  {
    std::unique_lock<std::mutex> lk(rx.mu);
    const bool all = rx.cv.wait_for(lk, 30s, [&] {
      return !rx.closed.empty() || (rx.next_seq == kSeqs && rx.heartbeats == kControl && rx.echoes == kNow &&
                                    rx.big_echoes == kBig && rx.chunks == kChunks);
    });
    INFO("closed: " << rx.closed << "; seqs " << rx.next_seq << ", heartbeats " << rx.heartbeats << ", echoes "
                    << rx.echoes << ", big " << rx.big_echoes << ", chunks " << rx.chunks);
    REQUIRE(rx.closed.empty());
    REQUIRE(all);
    REQUIRE_FALSE(rx.out_of_order);
  }
  // A chunk read straight into place arrived whole (and verified).
  if (rx.direct_chunks) REQUIRE(std::all_of(rx.sink.begin(), rx.sink.end(), [](uint8_t v) { return v == 0xab; }));
  asio::post(io, [&] {
    sender->close("done");
    receiver->close("done");
  });
  work.reset();
  io_thread.join();
}
