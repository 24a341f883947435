// Listening for workers, accepting their connections and running the
// controller's side of the handshake (transport/handshake). I/O thread
// (listen(): the user's thread, before the I/O thread starts).
#include "controller/controller_impl.hpp"

#include "common/check.hpp"
#include "transport/handshake.hpp"

#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace cox {

using std::chrono::milliseconds;

// A connection between accept and authentication.
struct Controller::Impl::Handshake {
  Handshake(transport::Socket s, std::string token)
      : socket(std::move(s)), timer(socket.get_executor()), protocol(std::move(token)) {}
  transport::Socket socket;
  asio::steady_timer timer;
  transport::ControllerHandshake protocol;
  std::array<uint8_t, wire::kMaxHandshakeFrame> in{};
  uint32_t len = 0;
  bool done = false;
};

void Controller::Impl::listen() {
  using Generic = asio::generic::stream_protocol;
  acceptor_.emplace(io_);
  if (mode_ == Mode::kLocal) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/cox-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw Error(fmt::format("mkdtemp({}) failed: {}", tmpl, std::strerror(errno)));
    socket_dir_ = tmpl;  // mkdtemp makes it 0700: only we can reach the socket
    const std::string path = socket_dir_ + "/controller.sock";
    Generic::endpoint ep{asio::local::stream_protocol::endpoint(path)};
    acceptor_->open(ep.protocol());
    acceptor_->bind(ep);
    endpoint_ = "unix:" + path;
  } else {
    asio::ip::tcp::resolver resolver(io_);
    std::error_code ec;
    auto results = resolver.resolve(opts_.listen_host, std::to_string(opts_.listen_port),
                                    asio::ip::tcp::resolver::passive, ec);
    COX_CHECK_ARG(!ec && !results.empty(), "cannot resolve listen_host '{}': {}", opts_.listen_host, ec.message());
    asio::ip::tcp::endpoint tcp_ep = results.begin()->endpoint();
    Generic::endpoint ep{tcp_ep};
    acceptor_->open(ep.protocol());
    acceptor_->set_option(asio::socket_base::reuse_address(true));
    acceptor_->bind(ep, ec);
    if (ec) throw Error(fmt::format("cannot listen on {}:{}: {}", opts_.listen_host, opts_.listen_port, ec.message()));
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    ::getsockname(acceptor_->native_handle(), reinterpret_cast<sockaddr*>(&ss), &sl);
    port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    const std::string host = tcp_ep.address().to_string();
    endpoint_ = tcp_ep.address().is_v6() ? fmt::format("[{}]:{}", host, port_) : fmt::format("{}:{}", host, port_);
  }
  ::fcntl(acceptor_->native_handle(), F_SETFD, FD_CLOEXEC);
  acceptor_->listen(std::max(opts_.workers, 16));
  accept_next();
}


void Controller::Impl::accept_next() {
  acceptor_->async_accept([this](const std::error_code& ec, transport::Socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_->is_open()) return;
    if (!ec) {
      ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
      if (mode_ == Mode::kAttach) {
        int one = 1;
        ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      }
      begin_handshake(std::move(socket));
    }
    accept_next();
  });
}

void Controller::Impl::begin_handshake(transport::Socket socket) {
  auto hs = std::make_shared<Handshake>(std::move(socket), token_);
  // A peer gets a bounded time to prove itself, whatever it does.
  hs->timer.expires_after(std::min<milliseconds>(opts_.startup_timeout, milliseconds(10000)));
  hs->timer.async_wait([this, hs](const std::error_code& ec) {
    if (!ec && !hs->done) reject(hs, "handshake not completed in time", false);
  });
  asio::async_write(hs->socket, asio::buffer(hs->protocol.hello()), [this, hs](const std::error_code& ec, size_t) {
    if (ec) return reject(hs, "cannot send hello: " + ec.message(), false);
    read_hello_reply(hs);
  });
}

void Controller::Impl::read_hello_reply(const std::shared_ptr<Handshake>& hs) {
  asio::async_read(hs->socket, asio::buffer(&hs->len, sizeof hs->len), [this, hs](const std::error_code& ec, size_t) {
    if (hs->done) return;
    if (ec) return reject(hs, "connection closed before hello reply: " + ec.message(), false);
    if (hs->len == 0 || hs->len > wire::kMaxHandshakeFrame) {
      return reject(hs, fmt::format("handshake frame of {} bytes (at most {} allowed)", hs->len,
                                    wire::kMaxHandshakeFrame),
                    false);
    }
    asio::async_read(hs->socket, asio::buffer(hs->in.data(), hs->len), [this, hs](const std::error_code& ec, size_t) {
      if (hs->done) return;
      if (ec) return reject(hs, "connection closed during hello reply: " + ec.message(), false);
      const auto verdict = hs->protocol.check(
          wire::FrameView{static_cast<wire::MsgType>(hs->in[0]), hs->in.data() + 1, hs->len - 1u}, size());
      if (!verdict.ok) return reject(hs, verdict.reason, verdict.tell_peer);
      finish_handshake(hs, verdict.reply);
    });
  });
}

namespace {
// The numeric address a TCP peer connected from; "" for a Unix socket.
std::string peer_host(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return "";
  char host[NI_MAXHOST];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0) return "";
  return host;
}
}  // namespace

void Controller::Impl::finish_handshake(const std::shared_ptr<Handshake>& hs, const wire::HelloReply& reply) {
  Worker& w = *workers_[static_cast<size_t>(reply.rank)];
  bool taken;
  {
    std::lock_guard<std::mutex> lk(mu_);
    taken = w.connected || w.lost || shutting_down_;
    if (!taken) {
      w.device = reply.device;
      w.host = peer_host(hs->socket.native_handle());
    }
  }
  if (taken) return reject(hs, fmt::format("rank {} is already connected", reply.rank), true);
  hs->done = true;
  hs->timer.cancel();
  transport::ControllerHandshake::Session session;
  session.world_size = size();
  session.heartbeat_interval_ms = static_cast<uint32_t>(opts_.heartbeat_interval.count());
  session.heartbeat_timeout_ms = static_cast<uint32_t>(opts_.heartbeat_timeout.count());
  session.max_frame = opts_.max_frame_bytes;
  // Over TCP every frame from here on carries a tag, the Welcome first
  // (transport/session_mac.hpp). Local mode's Unix socket lives in a 0700
  // directory that only this user can reach: no tags there.
  std::optional<transport::SessionKeys> keys;
  if (transport::session_authenticated(hs->socket.native_handle())) keys = hs->protocol.session_keys(reply);
  w.channel = std::make_shared<transport::Channel>(std::move(hs->socket), opts_.max_frame_bytes, &w,
                                                   keys ? &*keys : nullptr);
  w.channel->send_control(hs->protocol.welcome(reply, session));
  w.channel->start();
  {
    std::lock_guard<std::mutex> lk(mu_);
    w.connected = true;
    ++connected_;
  }
  cv_.notify_all();
}

void Controller::Impl::reject(const std::shared_ptr<Handshake>& hs, const std::string& reason, bool tell_peer) {
  if (hs->done) return;
  hs->done = true;
  hs->timer.cancel();
  {
    std::lock_guard<std::mutex> lk(mu_);
    rejected_.push_back(reason);
    if (rejected_.size() > 16) rejected_.erase(rejected_.begin());
  }
  std::error_code ignored;
  if (tell_peer) {
    // Best effort and bounded: the peer is told why, then cut off.
    auto bytes = transport::ControllerHandshake::reject(reason);
    ::send(hs->socket.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  hs->socket.shutdown(asio::socket_base::shutdown_both, ignored);
  hs->socket.close(ignored);
  cv_.notify_all();
}


}  // namespace cox
