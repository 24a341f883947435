// Reaching the controller and proving the token.
#include "worker/connect.hpp"

#include "common/check.hpp"
#include "collectives/communicator.hpp"
#include "transport/handshake.hpp"

#include <arpa/inet.h>

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
#include <memory>
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

namespace {

bool is_loopback(const std::string& host) {
  in_addr a4{};
  if (::inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6{};
  if (::inet_pton(AF_INET6, host.c_str(), &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
  return host == "localhost";
}

std::string numeric_host(const sockaddr* sa, socklen_t len) {
  char host[NI_MAXHOST];
  if (::getnameinfo(sa, len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0) return "";
  return host;
}

}  // namespace

std::string route_to(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICHOST;
  addrinfo* res = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), "9", &hints, &res); rc != 0) {
    throw collectives::CommError(fmt::format("peer host '{}' is not a numeric address: {}", host, gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, &::freeaddrinfo);
  // A datagram socket's connect() only looks up the route: nothing is sent.
  const int fd = ::socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw collectives::CommError(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  const bool ok = ::connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    throw collectives::CommError(fmt::format(
        "no interface of this host routes to peer host {} ({}); set $COX_GLOO_HOSTNAME to an address of this "
        "worker that its peers can reach",
        host, std::strerror(err)));
  }
  return numeric_host(reinterpret_cast<sockaddr*>(&ss), len);
}

std::string gloo_hostname(int control_fd, const std::vector<std::string>& hosts) {
  if (const char* h = std::getenv("COX_GLOO_HOSTNAME"); h && *h) return h;
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  std::string local;
  if (::getsockname(control_fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 &&
      (ss.ss_family == AF_INET || ss.ss_family == AF_INET6)) {
    local = numeric_host(reinterpret_cast<sockaddr*>(&ss), len);
  }
  // A member on another host: the interface that routes to it (a worker
  // that reached its controller over loopback must not advertise loopback
  // to such a peer). Members seen from loopback share the controller's host.
  for (const std::string& h : hosts) {
    if (h.empty() || is_loopback(h) || h == local) continue;
    std::string mine = route_to(h);
    if (!is_loopback(mine)) return mine;
  }
  return local.empty() ? "127.0.0.1" : local;
}

}  // namespace cox::worker
