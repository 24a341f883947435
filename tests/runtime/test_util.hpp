// Helpers for tests that run real worker processes.
#pragma once

#include <cox/controller.hpp>

#include "common/access.hpp"
#include "controller/controller_impl.hpp"
#include "transport/handshake.hpp"
#include "transport/session_mac.hpp"
#include "wire/messages.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace cox::test {

// The runtime under a controller, for checks of its internals.
inline cox::Controller::Impl& impl_of(cox::Controller& ctl) { return *cox::detail::Access::impl(ctl); }


using namespace std::chrono_literals;

inline std::string worker_binary() { return COX_TEST_WORKER; }

// True while `pid` names a process that has not been reaped.
inline bool process_exists(int64_t pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH); }

// Polls `pred` until true or `timeout`; returns its last value.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// An OutputSink that keeps every line.
struct CapturedOutput {
  std::mutex mu;
  std::vector<std::tuple<int, OutputStream, std::string>> lines;

  OutputSink sink() {
    return [this](int rank, OutputStream s, std::string_view line) {
      std::lock_guard<std::mutex> lk(mu);
      lines.emplace_back(rank, s, std::string(line));
    };
  }
  bool has(int rank, OutputStream s, const std::string& text) {
    std::lock_guard<std::mutex> lk(mu);
    for (auto& [r, st, l] : lines) {
      if (r == rank && st == s && l == text) return true;
    }
    return false;
  }
};

inline ControllerOptions local_options(int workers) {
  ControllerOptions o;
  o.workers = workers;
  o.worker_path = worker_binary();
  o.startup_timeout = 20000ms;
  return o;
}

template <class M>
void post(Controller& ctl, int rank, const M& m) {
  impl_of(ctl).post(rank, wire::encode_frame(m));
}

}  // namespace cox::test

#include "controller/launcher.hpp"
#include "transport/auth.hpp"
#include "transport/handshake.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>

namespace cox::test {

// A process started by the test, with its output captured.
struct Proc {
  controller::Spawned s;
  std::string out, err;
  int status = -1;

  // Reads its output until it exits (killing it after `timeout`), reaps it.
  void finish(std::chrono::milliseconds timeout = 10000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    bool open[2] = {true, true};
    while (open[0] || open[1]) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        ::kill(s.pid, SIGKILL);
        left = 1000ms;
      }
      pollfd p[2] = {{s.stdout_fd, static_cast<short>(open[0] ? POLLIN : 0), 0},
                     {s.stderr_fd, static_cast<short>(open[1] ? POLLIN : 0), 0}};
      ::poll(p, 2, static_cast<int>(left.count()));
      for (int i = 0; i < 2; ++i) {
        if (open[i] && p[i].revents) {
          char buf[4096];
          ssize_t n = ::read(i ? s.stderr_fd : s.stdout_fd, buf, sizeof buf);
          if (n <= 0) open[i] = false;
          else (i ? err : out).append(buf, static_cast<size_t>(n));
        }
      }
    }
    ::waitpid(s.pid, &status, 0);
    ::close(s.stdout_fd);
    ::close(s.stderr_fd);
    if (s.pidfd >= 0) ::close(s.pidfd);
  }
  bool exited_with(int code) const { return WIFEXITED(status) && WEXITSTATUS(status) == code; }
};

inline Proc start_worker(const std::string& connect, int rank,
                         std::vector<std::pair<std::string, std::string>> env) {
  // Start from a clean slate: no token inherited from the test's environment.
  env.emplace_back("COX_PARENT_PID", "");
  Proc p;
  p.s = controller::spawn_process(worker_binary(), {"--connect", connect, "--rank", std::to_string(rank),
                                                    "--connect-timeout-ms", "5000"},
                                  env);
  return p;
}

// A frame header announcing `len` bytes, followed by `body` (which may be
// shorter or longer: for building malformed frames).
inline std::vector<uint8_t> raw_frame(uint32_t len, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out(4 + body.size());
  std::memcpy(out.data(), &len, 4);
  if (!body.empty()) std::memcpy(out.data() + 4, body.data(), body.size());
  return out;
}

// Blocking frame I/O for hand-made peers.
inline void send_bytes(int fd, const std::vector<uint8_t>& b) {
  size_t done = 0;
  while (done < b.size()) {
    ssize_t w = ::send(fd, b.data() + done, b.size() - done, MSG_NOSIGNAL);
    if (w <= 0) return;
    done += static_cast<size_t>(w);
  }
}

inline bool recv_exact(int fd, void* buf, size_t n, std::chrono::milliseconds timeout = 5000ms) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) return false;
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Reads one frame; false on EOF or timeout.
inline bool recv_frame(int fd, std::vector<uint8_t>& body, std::chrono::milliseconds timeout = 5000ms) {
  uint32_t len;
  if (!recv_exact(fd, &len, 4, timeout)) return false;
  body.resize(len);
  return recv_exact(fd, body.data(), len, timeout);
}

// True when the peer has closed the connection (EOF or reset) within `timeout`.
inline bool peer_closes(int fd, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, 50) > 0) {
      ssize_t r = ::read(fd, buf, sizeof buf);
      if (r <= 0) return true;
    }
  }
  return false;
}

inline int tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A hand-made worker's connection: the socket, and over TCP the session's
// keys, so that it can tag what it sends as a real worker does.
struct FakeWorker {
  int fd = -1;
  std::optional<transport::SessionKeys> keys;
  std::unique_ptr<transport::FrameMac> send_mac;

  // `frames` (whole frames) each followed by its tag, the next ones in
  // this session's order.
  std::vector<uint8_t> sealed(const std::vector<uint8_t>& frames) {
    std::vector<uint8_t> out;
    transport::append_with_tag_room(out, frames.data(), frames.size());
    send_mac->seal_frames(out.data(), out.size());
    return out;
  }
};

// A hand-made worker: completes the handshake (transport/handshake) with
// `token` as `rank`. fd is -1 if the controller refused.
inline FakeWorker fake_worker(uint16_t port, const std::string& token, int rank) {
  FakeWorker w;
  int fd = tcp_connect(port);
  if (fd < 0) return w;
  try {
    auto session = transport::handshake_as_worker(fd, token, rank, "cpu", 5000ms);
    w.keys = session.keys;
    if (w.keys) w.send_mac = std::make_unique<transport::FrameMac>(w.keys->send, w.keys->send_seq);
  } catch (const std::exception&) {
    ::close(fd);
    return w;
  }
  w.fd = fd;
  return w;
}

}  // namespace cox::test
