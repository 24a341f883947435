// The handshake's frames and checks, and the worker's blocking driver.
#include "transport/handshake.hpp"

#include "transport/auth.hpp"

#include <fmt/format.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace cox::transport {

using Clock = std::chrono::steady_clock;

ControllerHandshake::ControllerHandshake(std::string token) : token_(std::move(token)), nonce_(random_nonce()) {
  wire::Hello hello;
  hello.nonce = nonce_;
  wire::encode_frame(hello, hello_);
}

ControllerHandshake::Verdict ControllerHandshake::check(const wire::FrameView& f, int world_size) const {
  Verdict v;
  try {
    v.reply = wire::decode<wire::HelloReply>(f);
  } catch (const ProtocolError& e) {
    v.reason = std::string("bad hello reply: ") + e.what();
    return v;
  }
  const wire::HelloReply& r = v.reply;
  if (r.magic != wire::kMagic) {
    v.reason = fmt::format("bad magic {:#x}", r.magic);
    return v;
  }
  if (r.version != wire::kProtocolVersion) {
    v.reason = fmt::format("worker speaks protocol version {}, this controller speaks {}", r.version,
                           wire::kProtocolVersion);
    v.tell_peer = true;
    return v;
  }
  // Authenticate before anything else: an unproven peer learns nothing more.
  if (!same_mac(r.mac, prove(token_, "worker", nonce_, r.rank))) {
    v.reason = fmt::format("authentication failed (claimed rank {})", r.rank);
    v.tell_peer = true;
    return v;
  }
  v.tell_peer = true;
  if (r.rank < 0 || r.rank >= world_size) {
    v.reason = fmt::format("rank {} out of range for {} workers", r.rank, world_size);
    return v;
  }
  v.ok = true;
  return v;
}

std::vector<uint8_t> ControllerHandshake::welcome(const wire::HelloReply& reply, const Session& s) const {
  wire::Welcome w;
  w.mac = prove(token_, "controller", reply.nonce, reply.rank);
  w.world_size = s.world_size;
  w.heartbeat_interval_ms = s.heartbeat_interval_ms;
  w.heartbeat_timeout_ms = s.heartbeat_timeout_ms;
  w.max_frame = s.max_frame;
  return wire::encode_frame(w);
}

SessionKeys ControllerHandshake::session_keys(const wire::HelloReply& reply) const {
  return derive_session_keys(token_, nonce_, reply.nonce, reply.rank, Side::kController);
}

std::vector<uint8_t> ControllerHandshake::reject(const std::string& reason) {
  // A reject must fit a handshake frame.
  return wire::encode_frame(wire::Reject{reason.substr(0, wire::kMaxHandshakeFrame / 2)});
}

WorkerHandshake::WorkerHandshake(std::string token, int32_t rank, std::string device)
    : token_(std::move(token)), rank_(rank), device_(std::move(device)) {}

std::vector<uint8_t> WorkerHandshake::on_hello(const wire::FrameView& f) {
  const auto hello = wire::decode<wire::Hello>(f);
  if (hello.magic != wire::kMagic) throw ProtocolError(fmt::format("handshake: bad magic {:#x}", hello.magic));
  if (hello.version != wire::kProtocolVersion) {
    throw Error(fmt::format("the controller speaks protocol version {}, this worker speaks {}", hello.version,
                            wire::kProtocolVersion));
  }
  controller_nonce_ = hello.nonce;
  wire::HelloReply reply;
  reply.rank = rank_;
  nonce_ = random_nonce();
  reply.nonce = nonce_;
  reply.mac = prove(token_, "worker", hello.nonce, rank_);
  reply.device = device_;
  return wire::encode_frame(reply);
}

wire::Welcome WorkerHandshake::on_welcome(const wire::FrameView& f) const {
  if (f.type == wire::MsgType::kReject) {
    throw Error("the controller refused this worker: " + wire::decode<wire::Reject>(f).reason);
  }
  auto w = wire::decode<wire::Welcome>(f);
  // The controller must prove the token too before we run anything it sends.
  if (!same_mac(w.mac, prove(token_, "controller", nonce_, rank_))) {
    throw Error("the controller failed to prove the shared token; refusing to run its messages");
  }
  if (w.max_frame < wire::kMinMaxFrame || w.max_frame > 0xffffffffu) {
    throw ProtocolError(fmt::format("handshake: frame limit {} outside [{}, 2^32-1]", w.max_frame, wire::kMinMaxFrame));
  }
  if (w.world_size <= rank_) {
    throw ProtocolError(fmt::format("handshake: a world of {} workers has no rank {}", w.world_size, rank_));
  }
  // Zero would make the heartbeat timer spin, or the worker give up at once.
  if (w.heartbeat_interval_ms == 0 || w.heartbeat_timeout_ms == 0) {
    throw ProtocolError(fmt::format("handshake: heartbeat interval {} ms and timeout {} ms must be positive",
                                    w.heartbeat_interval_ms, w.heartbeat_timeout_ms));
  }
  return w;
}

SessionKeys WorkerHandshake::session_keys() const {
  return derive_session_keys(token_, controller_nonce_, nonce_, rank_, Side::kWorker);
}

namespace {

void read_exact(int fd, void* buf, size_t n, Clock::time_point deadline, const char* what) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) throw Timeout(std::string("handshake: timed out waiting for ") + what);
    pollfd pfd{fd, POLLIN, 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(left));
    if (rc <= 0) continue;  // EINTR or time up: the loop checks the deadline
    ssize_t r = ::read(fd, p, n);
    if (r == 0) {
      throw Error(std::string("handshake: the controller closed the connection while we waited for ") + what +
                  " (wrong token, or not a Coxswain controller?)");
    }
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw Error(std::string("handshake: read failed: ") + std::strerror(errno));
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
}

void write_all(int fd, const std::vector<uint8_t>& bytes, Clock::time_point deadline) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w >= 0) {
      done += static_cast<size_t>(w);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) throw Error(std::string("handshake: write failed: ") + std::strerror(errno));
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) throw Timeout("handshake: timed out sending");
    pollfd pfd{fd, POLLOUT, 0};
    ::poll(&pfd, 1, static_cast<int>(left));
  }
}

wire::FrameView read_frame(int fd, std::vector<uint8_t>& buf, Clock::time_point deadline, const char* what) {
  uint32_t len = 0;
  read_exact(fd, &len, sizeof len, deadline, what);
  if (len == 0 || len > wire::kMaxHandshakeFrame) {
    throw ProtocolError(fmt::format("handshake: {} frame of {} bytes (at most {} allowed); is this a Coxswain "
                                    "controller?",
                                    what, len, wire::kMaxHandshakeFrame));
  }
  buf.resize(len);
  read_exact(fd, buf.data(), len, deadline, what);
  if (!wire::is_known_type(buf[0])) throw ProtocolError(fmt::format("handshake: unknown message type {}", buf[0]));
  return wire::FrameView{static_cast<wire::MsgType>(buf[0]), buf.data() + 1, len - 1u};
}

}  // namespace

WorkerSession handshake_as_worker(int fd, const std::string& token, int32_t rank, const std::string& device,
                                  std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  WorkerHandshake hs(token, rank, device);
  std::vector<uint8_t> buf;
  write_all(fd, hs.on_hello(read_frame(fd, buf, deadline, "hello")), deadline);
  const wire::FrameView f = read_frame(fd, buf, deadline, "welcome");
  const bool authenticated = session_authenticated(fd) && f.type == wire::MsgType::kWelcome;
  std::array<uint8_t, kTagBytes> tag{};
  if (authenticated) read_exact(fd, tag.data(), tag.size(), deadline, "the welcome's tag");
  WorkerSession s;
  s.welcome = hs.on_welcome(f);  // a Reject, or a failed proof, throws here
  if (authenticated) {
    SessionKeys keys = hs.session_keys();
    FrameMac mac(keys.recv, 0);
    uint32_t len = static_cast<uint32_t>(buf.size());
    mac.verify(reinterpret_cast<const uint8_t*>(&len), sizeof len, buf.data(), buf.size(), tag.data());
    keys.recv_seq = mac.seq();
    s.keys = keys;
  }
  return s;
}

}  // namespace cox::transport
