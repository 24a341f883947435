// Reaching the controller and proving the token.
#include "worker/connect.hpp"

#include "common/check.hpp"
#include "transport/handshake.hpp"

#include <fmt/format.h>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace cox::worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Endpoint {
  int family = AF_UNIX;
  std::string path;  // unix
  std::string host, port;
};

Endpoint parse_endpoint(const std::string& s) {
  Endpoint ep;
  if (s.rfind("unix:", 0) == 0) {
    ep.path = s.substr(5);
    COX_CHECK_ARG(!ep.path.empty() && ep.path.size() < sizeof(sockaddr_un::sun_path),
                  "--connect '{}': bad Unix socket path", s);
    return ep;
  }
  size_t colon = s.rfind(':');
  COX_CHECK_ARG(colon != std::string::npos && colon > 0 && colon + 1 < s.size(),
                "--connect '{}' is neither unix:PATH nor HOST:PORT", s);
  ep.family = AF_INET;
  ep.host = s.substr(0, colon);
  ep.port = s.substr(colon + 1);
  if (ep.host.size() > 2 && ep.host.front() == '[' && ep.host.back() == ']') ep.host = ep.host.substr(1, ep.host.size() - 2);
  return ep;
}

// One connection attempt; -1 with errno-style message on failure.
int try_connect(const Endpoint& ep, std::string& error) {
  if (ep.family == AF_UNIX) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, ep.path.c_str(), ep.path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
    error = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(ep.host.c_str(), ep.port.c_str(), &hints, &res); rc != 0) {
    error = ::gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = res; a; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      break;
    }
    error = std::strerror(errno);
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  return fd;
}

}  // namespace

Session connect_and_handshake(const WorkerOptions& o, const std::string& token, const std::string& device) {
  const Endpoint ep = parse_endpoint(o.connect);
  const auto connect_deadline = Clock::now() + o.connect_timeout;
  std::string error;
  int fd = -1;
  for (auto pause = milliseconds(10);; pause = std::min(pause * 2, milliseconds(500))) {
    fd = try_connect(ep, error);
    if (fd >= 0) break;
    if (Clock::now() + pause > connect_deadline) {
      throw Timeout(fmt::format("cannot reach the controller at {} within {} ms: {}", o.connect,
                                o.connect_timeout.count(), error));
    }
    std::this_thread::sleep_for(pause);  // back off between attempts
  }
  Session s;
  s.fd = fd;
  try {
    auto joined = transport::handshake_as_worker(fd, token, o.rank, device, o.handshake_timeout);
    s.welcome = joined.welcome;
    s.keys = joined.keys;
  } catch (...) {
    ::close(fd);
    throw;
  }
  return s;
}

std::string gloo_hostname(int control_fd) {
  if (const char* h = std::getenv("COX_GLOO_HOSTNAME"); h && *h) return h;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(control_fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
      (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
    char host[NI_MAXHOST];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) == 0) {
      return host;
    }
  }
  return "127.0.0.1";
}

}  // namespace cox::worker
