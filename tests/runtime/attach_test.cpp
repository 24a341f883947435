// Attach mode over TCP: workers started by someone else, the token and its
// challenge-response both ways, and hand-made peers that misbehave.
#include <cox/tensor.hpp>

#include "runtime/test_util.hpp"
#include "transport/handshake.hpp"
#include "transport/session_mac.hpp"

#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <sstream>

using namespace cox;
using namespace cox::test;

namespace {

ControllerOptions attach_options(int workers) {
  ControllerOptions o;
  o.workers = workers;
  o.listen_host = "127.0.0.1";
  o.startup_timeout = 10000ms;
  return o;
}

std::string endpoint(const AttachInfo& info) { return info.host + ":" + std::to_string(info.port); }

std::string temp_file(const std::string& content, mode_t mode) {
  char path[] = "/tmp/cox-token-XXXXXX";
  int fd = ::mkstemp(path);
  (void)!::write(fd, content.data(), content.size());
  ::fchmod(fd, mode);
  ::close(fd);
  return path;
}

}  // namespace

TEST_CASE("workers attach over TCP with the token from the environment", "[attach]") {
  std::vector<Proc> procs;
  auto opts = attach_options(2);
  opts.on_listening = [&](const AttachInfo& info) {
    REQUIRE(info.port != 0);
    REQUIRE(info.token.size() == 64);
    for (int r = 0; r < 2; ++r) procs.push_back(start_worker(endpoint(info), r, {{"COX_TOKEN", info.token}}));
  };
  CapturedOutput out;
  opts.output_sink = out.sink();
  {
    Controller ctl = Controller::attach(opts);
    REQUIRE(ctl.worker_pid(0) == -1);
    ctl.sync();
    REQUIRE(ctl.ping(1) > std::chrono::nanoseconds(0));
    // An attached worker's output travels to the controller over its connection.
    post(ctl, 1, wire::Print{wire::Stream::kStderr, "from an attached worker"});
    post(ctl, 0, wire::Print{wire::Stream::kStdout, "last words before shutdown"});
    ctl.sync();
    REQUIRE(eventually([&] { return out.has(1, OutputStream::kStderr, "from an attached worker"); }));
    ctl.shutdown();
  }
  // Output written just before shutdown still arrives.
  REQUIRE(out.has(0, OutputStream::kStdout, "last words before shutdown"));
  for (auto& p : procs) {
    p.finish();
    INFO(p.err);
    REQUIRE(p.exited_with(0));
  }
  // And still goes to the worker's own stderr, for the launcher's logs.
  REQUIRE_THAT(procs[1].err, Catch::Contains("from an attached worker"));
}

TEST_CASE("a worker reads its token from a 0600 file, and refuses a readable one", "[attach]") {
  const std::string token = transport::generate_token();
  const std::string good = temp_file(token + "\n", 0600);
  const std::string bad = temp_file(token, 0644);
  auto opts = attach_options(1);
  opts.token = token;
  opts.startup_timeout = 10000ms;
  Proc refused;
  std::vector<Proc> procs;
  opts.on_listening = [&](const AttachInfo& info) {
    refused = start_worker(endpoint(info), 0, {{"COX_TOKEN_FILE", bad}, {"COX_TOKEN", ""}});
    refused.finish();
    procs.push_back(start_worker(endpoint(info), 0, {{"COX_TOKEN_FILE", good}, {"COX_TOKEN", ""}}));
  };
  {
    Controller ctl = Controller::attach(opts);
    ctl.sync();
  }
  procs[0].finish();
  REQUIRE(procs[0].exited_with(0));
  REQUIRE(refused.exited_with(1));
  REQUIRE_THAT(refused.err, Catch::Contains("has mode 644") && Catch::Contains("chmod 600"));
  std::remove(good.c_str());
  std::remove(bad.c_str());
}

TEST_CASE("a wrong or missing token is refused and start-up times out naming the rank", "[attach][auth]") {
  const bool missing = GENERATE(false, true);
  auto opts = attach_options(2);
  opts.startup_timeout = 6000ms;
  std::vector<Proc> procs;
  opts.on_listening = [&](const AttachInfo& info) {
    procs.push_back(start_worker(endpoint(info), 0, {{"COX_TOKEN", info.token}}));
    procs.push_back(start_worker(endpoint(info), 1, {{"COX_TOKEN", missing ? "" : "not-the-token-of-this-controller"}}));
  };
  try {
    Controller::attach(opts);
    FAIL("start-up should have timed out");
  } catch (const Timeout& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("worker [1] of 2 did not connect"));
    if (!missing) REQUIRE_THAT(e.what(), Catch::Contains("authentication failed (claimed rank 1)"));
  }
  for (auto& p : procs) p.finish();
  REQUIRE(procs[0].exited_with(0));  // told to shut down when start-up failed
  REQUIRE(procs[1].exited_with(1));
  if (missing) {
    REQUIRE_THAT(procs[1].err, Catch::Contains("no token"));
  } else {
    REQUIRE_THAT(procs[1].err, Catch::Contains("refused this worker: authentication failed"));
  }
}

TEST_CASE("unauthenticated peers are cut off before anything they send is read", "[attach][auth]") {
  auto opts = attach_options(1);
  std::thread peers;
  std::vector<Proc> procs;
  bool oversized_closed = false, forged_closed = false;
  opts.on_listening = [&](const AttachInfo& info) {
    peers = std::thread([&, info] {
      // 1. Announces a handshake frame far over the limit.
      int fd = tcp_connect(info.port);
      std::vector<uint8_t> body;
      recv_frame(fd, body);
      uint32_t huge = 1 << 20;
      std::vector<uint8_t> hdr(4);
      std::memcpy(hdr.data(), &huge, 4);
      send_bytes(fd, hdr);
      oversized_closed = peer_closes(fd);
      ::close(fd);
      // 2. A well-formed reply with a forged proof, then messages.
      fd = tcp_connect(info.port);
      recv_frame(fd, body);
      wire::HelloReply forged;
      forged.rank = 0;
      std::vector<uint8_t> bytes = wire::encode_frame(forged);
      wire::encode_frame(wire::SyncDone{1}, bytes);
      wire::encode_frame(wire::Log{wire::Stream::kStdout, "INJECTED"}, bytes);
      send_bytes(fd, bytes);
      forged_closed = peer_closes(fd);
      ::close(fd);
      // 3. Then the real worker.
      procs.push_back(start_worker(endpoint(info), 0, {{"COX_TOKEN", info.token}}));
    });
  };
  CapturedOutput out;
  opts.output_sink = out.sink();
  Controller ctl = Controller::attach(opts);
  peers.join();
  ctl.sync();
  REQUIRE(oversized_closed);
  REQUIRE(forged_closed);
  auto rejected = impl_of(ctl).rejected_connections();
  REQUIRE(rejected.size() == 2);
  REQUIRE_THAT(rejected[0], Catch::Contains("handshake frame of 1048576 bytes"));
  REQUIRE_THAT(rejected[1], Catch::Contains("authentication failed"));
  REQUIRE_FALSE(out.has(0, OutputStream::kStdout, "INJECTED"));
  ctl.shutdown();
  procs[0].finish();
}

TEST_CASE("malformed frames from an authenticated worker lose that worker, not the controller", "[attach][wire]") {
  // Whole frames carry a valid tag (the peer holds the token): what is
  // wrong with them is found after authentication. The others are refused
  // from their header alone.
  struct Case {
    const char* name;
    std::vector<uint8_t> bytes;
    const char* reason;
    bool tagged;
  };
  const auto c = GENERATE_COPY(
      Case{"zero length", raw_frame(0, {}), "length 0", false},
      Case{"unknown type", raw_frame(1, {222}), "unknown message type 222", false},
      Case{"oversized", raw_frame(1 << 20, {30}), "exceeds the maximum frame size 65536", false},
      Case{"short payload", raw_frame(4, {30, 1, 2, 3}), "truncated sync_done", true},
      Case{"long payload", raw_frame(10, {30, 1, 2, 3, 4, 5, 6, 7, 8, 9}), "trailing bytes", true},
      Case{"controller-only type", raw_frame(9, {11, 0, 0, 0, 0, 0, 0, 0, 0}), "a sync message is for a worker, not the controller", true},
      Case{"bad stream", raw_frame(6, {33, 9, 0, 0, 0, 0}), "field 'log.stream' at offset 1: value 9 is out of range", true},
      Case{"cut short", raw_frame(100, {30, 1}), "connection closed by peer", false});
  INFO(c.name);
  auto opts = attach_options(1);
  opts.max_frame_bytes = 65536;
  FakeWorker w;
  std::thread peer;
  opts.on_listening = [&](const AttachInfo& info) {
    peer = std::thread([&, info] { w = fake_worker(info.port, info.token, 0); });
  };
  Controller ctl = Controller::attach(opts);
  peer.join();
  const int fd = w.fd;
  REQUIRE(fd >= 0);
  REQUIRE(w.send_mac);  // TCP: an authenticated session
  send_bytes(fd, c.tagged ? w.sealed(c.bytes) : c.bytes);
  if (std::string(c.name) == "cut short") ::shutdown(fd, SHUT_WR);
  try {
    ctl.sync(5000ms);
    FAIL("sync should have thrown");
  } catch (const WorkerLost& e) {
    REQUIRE(e.rank() == 0);
    REQUIRE_THAT(e.reason(), Catch::Contains(c.reason));
  }
  REQUIRE(peer_closes(fd));
  ::close(fd);
}

namespace {

// A hand-made controller on a Unix socket (unauthenticated after the
// handshake, as local mode) or on TCP loopback (authenticated, as attach
// mode), for checking what a real worker accepts.
struct FakeController {
  std::string dir, path;
  uint16_t port = 0;
  int listen_fd = -1;

  explicit FakeController(bool tcp = false) {
    if (tcp) {
      listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
      socklen_t len = sizeof a;
      ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
      port = ntohs(a.sin_port);
    } else {
      char tmpl[] = "/tmp/cox-fake-XXXXXX";
      dir = ::mkdtemp(tmpl);
      path = dir + "/s.sock";
      listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un a{};
      a.sun_family = AF_UNIX;
      std::strcpy(a.sun_path, path.c_str());
      ::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    }
    ::listen(listen_fd, 4);
  }
  ~FakeController() {
    ::close(listen_fd);
    if (!path.empty()) {
      ::unlink(path.c_str());
      ::rmdir(dir.c_str());
    }
  }
  std::string endpoint() const { return port ? "127.0.0.1:" + std::to_string(port) : "unix:" + path; }
  int accept_one() {
    pollfd p{listen_fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return -1;
    return ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
};

// The controller's side of a hand-made session: over TCP, what it sends
// after the handshake must carry its tags.
struct FakeSession {
  bool ok = false;
  std::unique_ptr<transport::FrameMac> send_mac;  // TCP only
  // `frames` with their tags, the next ones in this session's order (as
  // they are, over a Unix socket).
  std::vector<uint8_t> sealed(const std::vector<uint8_t>& frames) {
    if (!send_mac) return frames;
    std::vector<uint8_t> out;
    transport::append_with_tag_room(out, frames.data(), frames.size());
    send_mac->seal_frames(out.data(), out.size());
    return out;
  }
  explicit operator bool() const { return ok; }
};

// Runs the controller's side of the handshake (transport/handshake);
// `mac_token` proves the controller (a wrong one forges the proof).
FakeSession fake_handshake(int fd, const std::string& mac_token, uint64_t max_frame = 4096) {
  FakeSession s;
  transport::ControllerHandshake hs(mac_token);
  send_bytes(fd, hs.hello());
  std::vector<uint8_t> body;
  if (!recv_frame(fd, body)) return s;
  // With a forged token the worker's proof does not check out either; the
  // reply is answered all the same.
  const auto verdict = hs.check(wire::FrameView{static_cast<wire::MsgType>(body[0]), body.data() + 1, body.size() - 1}, 1);
  transport::ControllerHandshake::Session session;
  session.world_size = 1;
  session.heartbeat_interval_ms = 1000;
  session.heartbeat_timeout_ms = 10000;
  session.max_frame = max_frame;
  if (transport::session_authenticated(fd)) {
    s.send_mac = std::make_unique<transport::FrameMac>(hs.session_keys(verdict.reply).send, 0);
  }
  send_bytes(fd, s.sealed(hs.welcome(verdict.reply, session)));  // the Welcome is the first tagged frame
  s.ok = true;
  return s;
}

}  // namespace

TEST_CASE("a worker runs nothing from a controller that cannot prove the token", "[attach][auth]") {
  FakeController fake;
  const std::string token = transport::generate_token();
  Proc p = start_worker("unix:" + fake.path, 0, {{"COX_TOKEN", token}});
  int fd = fake.accept_one();
  REQUIRE(fd >= 0);
  REQUIRE(fake_handshake(fd, "some-other-token").ok);
  std::vector<uint8_t> bytes = wire::encode_frame(wire::Print{wire::Stream::kStdout, "SHOULD NOT RUN"});
  wire::encode_frame(wire::Exit{42}, bytes);
  send_bytes(fd, bytes);
  p.finish();
  ::close(fd);
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("failed to prove the shared token"));
  REQUIRE_THAT(p.out, !Catch::Contains("SHOULD NOT RUN"));
}

TEST_CASE("a worker refuses a controller of another protocol version", "[attach]") {
  FakeController fake;
  const std::string token = transport::generate_token();
  Proc p = start_worker("unix:" + fake.path, 0, {{"COX_TOKEN", token}});
  int fd = fake.accept_one();
  REQUIRE(fd >= 0);
  wire::Hello hello;
  hello.version = 99;
  send_bytes(fd, wire::encode_frame(hello));
  p.finish();
  ::close(fd);
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("protocol version 99"));
}

TEST_CASE("malformed frames from the controller stop a worker with the reason, never a crash", "[attach][wire]") {
  struct Case {
    const char* name;
    std::vector<uint8_t> bytes;
    const char* reason;
  };
  const auto c = GENERATE_COPY(
      Case{"zero length", raw_frame(0, {}), "length 0"},
      Case{"unknown type", raw_frame(1, {250}), "unknown message type 250"},
      Case{"oversized", raw_frame(5000, {11}), "length 5000 exceeds the maximum frame size 4096"},
      Case{"short payload", raw_frame(4, {11, 1, 2, 3}), "truncated sync"},
      Case{"string past the end", raw_frame(9, {15, 0xff, 0xff, 0, 0, 'a', 'b', 'c', 'd'}), "field 'raise.message'"},
      Case{"worker-only type", raw_frame(9, {30, 0, 0, 0, 0, 0, 0, 0, 0}), "a sync_done message is for the controller, not a worker"});
  INFO(c.name);
  FakeController fake;
  const std::string token = transport::generate_token();
  Proc p = start_worker("unix:" + fake.path, 0, {{"COX_TOKEN", token}});
  int fd = fake.accept_one();
  REQUIRE(fd >= 0);
  REQUIRE(fake_handshake(fd, token).ok);
  send_bytes(fd, c.bytes);
  REQUIRE(peer_closes(fd));
  p.finish();
  ::close(fd);
  INFO(p.err);
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("protocol error") && Catch::Contains(c.reason));
}

TEST_CASE("attached workers exit when their controller is SIGKILLed", "[attach][supervision]") {
  // The controller runs in a child process; the workers are ours, so we see
  // them go.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(fds[0]);
    try {
      auto opts = attach_options(2);
      opts.on_listening = [&](const AttachInfo& info) {
        std::string line = endpoint(info) + " " + info.token + "\n";
        (void)!::write(fds[1], line.data(), line.size());
      };
      Controller ctl = Controller::attach(opts);
      ctl.sync();
      (void)!::write(fds[1], "ready\n", 6);
      ::pause();
    } catch (...) {
    }
    std::_Exit(1);
  }
  ::close(fds[1]);
  std::string text;
  auto read_line = [&] {
    char c;
    std::string line;
    while (::read(fds[0], &c, 1) == 1 && c != '\n') line += c;
    return line;
  };
  std::istringstream first(read_line());
  std::string ep, token;
  first >> ep >> token;
  std::vector<Proc> procs;
  for (int r = 0; r < 2; ++r) procs.push_back(start_worker(ep, r, {{"COX_TOKEN", token}}));
  REQUIRE(read_line() == "ready");
  ::close(fds[0]);
  REQUIRE(::kill(child, SIGKILL) == 0);
  ::waitpid(child, nullptr, 0);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& p : procs) {
    p.finish(5000ms);
    INFO(p.err);
    REQUIRE(p.exited_with(1));
    REQUIRE_THAT(p.err, Catch::Contains("lost the controller"));
  }
  REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
}

// --- authenticated sessions ----------------------------------------------------------

TEST_CASE("a peer that relays a real handshake cannot inject, replay, reorder or alter frames", "[attach][auth]") {
  // The peer below holds the token only to stand for a relay that passed a
  // real worker's handshake through: what it sends afterwards must carry
  // the session's tags, in order, or the controller drops it.
  const std::string name = GENERATE(as<std::string>{}, "untagged", "replayed", "reordered", "altered", "gap");
  INFO(name);
  auto opts = attach_options(1);
  FakeWorker w;
  std::thread peer;
  opts.on_listening = [&](const AttachInfo& info) {
    peer = std::thread([&, info] { w = fake_worker(info.port, info.token, 0); });
  };
  CapturedOutput out;
  opts.output_sink = out.sink();
  Controller ctl = Controller::attach(opts);
  peer.join();
  REQUIRE(w.fd >= 0);
  REQUIRE(w.send_mac);
  const std::vector<uint8_t> hb = wire::encode_frame(wire::Heartbeat{});
  const std::vector<uint8_t> log = wire::encode_frame(wire::Log{wire::Stream::kStdout, "INJECTED"});
  std::vector<uint8_t> bytes;
  auto append = [&](const std::vector<uint8_t>& b) { bytes.insert(bytes.end(), b.begin(), b.end()); };
  if (name == "untagged") {
    append(log);
    bytes.insert(bytes.end(), transport::kTagBytes, 0);
  } else if (name == "replayed") {
    const auto first = w.sealed(hb);
    append(first);
    append(first);
  } else if (name == "reordered") {
    const auto first = w.sealed(hb);
    append(w.sealed(log));
    append(first);
  } else if (name == "altered") {
    append(w.sealed(hb));
    auto second = w.sealed(log);
    second[second.size() - transport::kTagBytes - 1] ^= 1;  // the last byte of the text
    append(second);
  } else {  // a frame cut out of the stream, the next one sent
    append(w.sealed(hb));
    (void)w.sealed(hb);
    append(w.sealed(log));
  }
  send_bytes(w.fd, bytes);
  try {
    ctl.sync(5000ms);
    FAIL("sync should have thrown");
  } catch (const WorkerLost& e) {
    REQUIRE(e.rank() == 0);
    REQUIRE_THAT(e.reason(), Catch::Contains("protocol error: authentication failed"));
  }
  REQUIRE(peer_closes(w.fd));
  ::close(w.fd);
  REQUIRE_FALSE(out.has(0, OutputStream::kStdout, "INJECTED"));
  REQUIRE_FALSE(out.has(0, OutputStream::kStdout, "INJECTEE"));
}

TEST_CASE("a worker refuses frames that do not carry its session's tag", "[attach][auth]") {
  const std::string name = GENERATE(as<std::string>{}, "untagged", "replayed", "chunk");
  INFO(name);
  FakeController fake(/*tcp=*/true);
  const std::string token = transport::generate_token();
  Proc p = start_worker(fake.endpoint(), 0, {{"COX_TOKEN", token}});
  int fd = fake.accept_one();
  REQUIRE(fd >= 0);
  FakeSession s = fake_handshake(fd, token, 1 << 20);
  REQUIRE(s.ok);
  REQUIRE(s.send_mac);
  std::vector<uint8_t> bytes;
  auto append = [&](const std::vector<uint8_t>& b) { bytes.insert(bytes.end(), b.begin(), b.end()); };
  if (name == "untagged") {
    append(wire::encode_frame(wire::Print{wire::Stream::kStdout, "SHOULD NOT RUN"}));
    bytes.insert(bytes.end(), transport::kTagBytes, 0);
    append(wire::encode_frame(wire::Exit{42}));
    bytes.insert(bytes.end(), transport::kTagBytes, 0);
  } else if (name == "replayed") {
    const auto hb = s.sealed(wire::encode_frame(wire::Heartbeat{}));
    append(hb);
    append(hb);
  } else {
    // A tensor chunk large enough to be read straight into the tensor,
    // with a wrong tag: refused before the tensor is handed on.
    const uint64_t n = 256 * 1024;
    wire::Put put;
    put.id = 1;
    put.dtype = static_cast<uint8_t>(at::kByte);
    put.sizes = {static_cast<int64_t>(n)};
    put.nbytes = n;
    append(s.sealed(wire::encode_frame(put)));
    std::array<uint8_t, wire::kChunkOverhead> head;
    wire::chunk_header(head, wire::MsgType::kPutData, 1, 0, n);
    bytes.insert(bytes.end(), head.begin(), head.end());
    bytes.insert(bytes.end(), n, 7);
    bytes.insert(bytes.end(), transport::kTagBytes, 0);
    append(s.sealed(wire::encode_frame(wire::Print{wire::Stream::kStdout, "SHOULD NOT RUN"})));
  }
  send_bytes(fd, bytes);
  REQUIRE(peer_closes(fd));
  p.finish();
  ::close(fd);
  INFO(p.err);
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("protocol error") && Catch::Contains("authentication failed"));
  REQUIRE_THAT(p.out + p.err, !Catch::Contains("SHOULD NOT RUN"));
}

TEST_CASE("tensors travel both ways over an authenticated session", "[attach][auth]") {
  auto opts = attach_options(1);
  opts.max_frame_bytes = 1 << 20;  // several chunks, each read straight into place
  std::vector<Proc> procs;
  opts.on_listening = [&](const AttachInfo& info) {
    procs.push_back(start_worker(endpoint(info), 0, {{"COX_TOKEN", info.token}}));
  };
  {
    Controller ctl = Controller::attach(opts);
    DeviceMesh mesh = ctl.mesh({{"w", 1}});
    const at::Tensor v = at::arange(int64_t{3} << 20, at::kFloat);  // 12 MiB
    Tensor t = from_local(mesh, v);
    REQUIRE(at::equal(t.fetch(Coord{0}).get(), v));
    ctl.sync();
  }
  procs[0].finish();
  INFO(procs[0].err);
  REQUIRE(procs[0].exited_with(0));
}

namespace {

// Runs a worker that must refuse its token before connecting anywhere.
Proc refused_worker(std::vector<std::pair<std::string, std::string>> env) {
  Proc p = start_worker("127.0.0.1:1", 0, std::move(env));
  p.finish();
  return p;
}

}  // namespace

TEST_CASE("tokens shorter than 16 bytes are refused, by the controller and by workers", "[attach][auth]") {
  auto opts = attach_options(1);
  opts.token = "fifteen-bytes!!";
  REQUIRE(opts.token.size() == 15);
  try {
    Controller::attach(opts);
    FAIL("a short token should have been refused");
  } catch (const InvalidArgument& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("ControllerOptions::token has 15 bytes; at least 16"));
  }
  Proc p = refused_worker({{"COX_TOKEN", "fifteen-bytes!!"}});
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("$COX_TOKEN has 15 bytes; at least 16"));
  const std::string file = temp_file("short\n", 0600);
  p = refused_worker({{"COX_TOKEN_FILE", file}, {"COX_TOKEN", ""}});
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("has 5 bytes; at least 16"));
  std::remove(file.c_str());
}

TEST_CASE("a token file must be this user's own private regular file, not a link to one", "[attach][auth]") {
  const std::string token = transport::generate_token();
  const std::string good = temp_file(token, 0600);
  const std::string link = good + ".link";
  REQUIRE(::symlink(good.c_str(), link.c_str()) == 0);
  const std::string group = temp_file(token, 0640);
  char dir_tmpl[] = "/tmp/cox-token-dir-XXXXXX";
  const std::string dir = ::mkdtemp(dir_tmpl);

  Proc p = refused_worker({{"COX_TOKEN_FILE", link}, {"COX_TOKEN", ""}});
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("is a symbolic link"));
  p = refused_worker({{"COX_TOKEN_FILE", group}, {"COX_TOKEN", ""}});
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("has mode 640") && Catch::Contains("chmod 600"));
  p = refused_worker({{"COX_TOKEN_FILE", dir}, {"COX_TOKEN", ""}});
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("is not a regular file"));
  if (::geteuid() == 0) {
    // Only root can give a file away.
    const std::string theirs = temp_file(token, 0600);
    REQUIRE(::chown(theirs.c_str(), 65534, 65534) == 0);
    p = refused_worker({{"COX_TOKEN_FILE", theirs}, {"COX_TOKEN", ""}});
    REQUIRE(p.exited_with(1));
    REQUIRE_THAT(p.err, Catch::Contains("belongs to uid 65534, not to this user"));
    std::remove(theirs.c_str());
  }
  std::remove(link.c_str());
  std::remove(good.c_str());
  std::remove(group.c_str());
  ::rmdir(dir.c_str());
}

TEST_CASE("an attaching controller given no token reads it from the environment as workers do", "[attach][auth]") {
  const std::string token = transport::generate_token();
  const std::string good = temp_file(token + "\n", 0600);
  const std::string link = good + ".link";
  REQUIRE(::symlink(good.c_str(), link.c_str()) == 0);
  struct EnvGuard {
    ~EnvGuard() { ::unsetenv("COX_TOKEN_FILE"); }
  } guard;
  ::unsetenv("COX_TOKEN");

  ::setenv("COX_TOKEN_FILE", link.c_str(), 1);
  try {
    Controller::attach(attach_options(1));
    FAIL("a symbolic link should have been refused");
  } catch (const InvalidArgument& e) {
    REQUIRE_THAT(e.what(), Catch::Contains("is a symbolic link"));
  }

  ::setenv("COX_TOKEN_FILE", good.c_str(), 1);
  auto opts = attach_options(1);
  std::vector<Proc> procs;
  opts.on_listening = [&](const AttachInfo& info) {
    REQUIRE(info.token == token);
    procs.push_back(start_worker(endpoint(info), 0, {}));  // the same $COX_TOKEN_FILE
  };
  {
    Controller ctl = Controller::attach(opts);
    ctl.sync();
  }
  procs[0].finish();
  INFO(procs[0].err);
  REQUIRE(procs[0].exited_with(0));
  std::remove(link.c_str());
  std::remove(good.c_str());
}
