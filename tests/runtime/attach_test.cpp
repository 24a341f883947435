// Attach mode over TCP: workers started by someone else, the token and its
// challenge-response both ways, and hand-made peers that misbehave.
#include "runtime/test_util.hpp"
#include "transport/handshake.hpp"

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
    procs.push_back(start_worker(endpoint(info), 1, {{"COX_TOKEN", missing ? "" : "not-the-token"}}));
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
  auto rejected = ctl.impl().rejected_connections();
  REQUIRE(rejected.size() == 2);
  REQUIRE_THAT(rejected[0], Catch::Contains("handshake frame of 1048576 bytes"));
  REQUIRE_THAT(rejected[1], Catch::Contains("authentication failed"));
  REQUIRE_FALSE(out.has(0, OutputStream::kStdout, "INJECTED"));
  ctl.shutdown();
  procs[0].finish();
}

TEST_CASE("malformed frames from an authenticated worker lose that worker, not the controller", "[attach][wire]") {
  struct Case {
    const char* name;
    std::vector<uint8_t> bytes;
    const char* reason;
  };
  const auto c = GENERATE_COPY(
      Case{"zero length", raw_frame(0, {}), "length 0"},
      Case{"unknown type", raw_frame(1, {222}), "unknown message type 222"},
      Case{"oversized", raw_frame(1 << 20, {30}), "exceeds the maximum frame size 65536"},
      Case{"short payload", raw_frame(4, {30, 1, 2, 3}), "truncated sync_done"},
      Case{"long payload", raw_frame(10, {30, 1, 2, 3, 4, 5, 6, 7, 8, 9}), "trailing bytes"},
      Case{"controller-only type", raw_frame(9, {11, 0, 0, 0, 0, 0, 0, 0, 0}), "a sync message is for a worker, not the controller"},
      Case{"bad stream", raw_frame(6, {33, 9, 0, 0, 0, 0}), "field 'log.stream' at offset 1: value 9 is out of range"},
      Case{"cut short", raw_frame(100, {30, 1}), "connection closed by peer"});
  INFO(c.name);
  auto opts = attach_options(1);
  opts.max_frame_bytes = 65536;
  int fd = -1;
  std::thread peer;
  opts.on_listening = [&](const AttachInfo& info) {
    peer = std::thread([&, info] { fd = fake_worker(info.port, info.token, 0); });
  };
  Controller ctl = Controller::attach(opts);
  peer.join();
  REQUIRE(fd >= 0);
  send_bytes(fd, c.bytes);
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

// A hand-made controller on a Unix socket, for checking what a real worker
// accepts. Returns the accepted fd after sending `hello`.
struct FakeController {
  std::string dir, path;
  int listen_fd = -1;

  FakeController() {
    char tmpl[] = "/tmp/cox-fake-XXXXXX";
    dir = ::mkdtemp(tmpl);
    path = dir + "/s.sock";
    listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    ::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(listen_fd, 4);
  }
  ~FakeController() {
    ::close(listen_fd);
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
  }
  int accept_one() {
    pollfd p{listen_fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return -1;
    return ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
};

// Runs the controller's side of the handshake (transport/handshake);
// `mac_token` proves the controller (a wrong one forges the proof).
bool fake_handshake(int fd, const std::string& mac_token, uint64_t max_frame = 4096) {
  transport::ControllerHandshake hs(mac_token);
  send_bytes(fd, hs.hello());
  std::vector<uint8_t> body;
  if (!recv_frame(fd, body)) return false;
  // With a forged token the worker's proof does not check out either; the
  // reply is answered all the same.
  const auto verdict = hs.check(wire::FrameView{static_cast<wire::MsgType>(body[0]), body.data() + 1, body.size() - 1}, 1);
  transport::ControllerHandshake::Session session;
  session.world_size = 1;
  session.heartbeat_interval_ms = 1000;
  session.heartbeat_timeout_ms = 10000;
  session.max_frame = max_frame;
  send_bytes(fd, hs.welcome(verdict.reply, session));
  return true;
}

}  // namespace

TEST_CASE("a worker runs nothing from a controller that cannot prove the token", "[attach][auth]") {
  FakeController fake;
  const std::string token = transport::generate_token();
  Proc p = start_worker("unix:" + fake.path, 0, {{"COX_TOKEN", token}});
  int fd = fake.accept_one();
  REQUIRE(fd >= 0);
  REQUIRE(fake_handshake(fd, "some-other-token"));
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
  REQUIRE(fake_handshake(fd, token));
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
