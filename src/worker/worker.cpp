// The worker: blocking connect and handshake, then an I/O thread (Asio) that
// moves frames into an inbox and an executor (the calling thread) that runs
// them in order.
#include "worker/worker.hpp"

#include "worker/cpu_allocator.hpp"
#include "worker/gpu.hpp"
#include "worker/tensors.hpp"

#include "common/check.hpp"
#include "ops/registry.hpp"
#include "transport/auth.hpp"
#include "transport/channel.hpp"
#include "wire/messages.hpp"

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <functional>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

namespace cox::worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Where fatal messages go: stderr, or the original stderr while output is
// forwarded to the controller.
int g_diag_fd = 2;

[[noreturn]] void die(int rank, const std::string& why) {
  std::fflush(stdout);
  std::fflush(stderr);
  const std::string line = fmt::format("cox-worker {}: {}\n", rank, why);
  (void)!::write(g_diag_fd, line.data(), line.size());
  std::_Exit(1);
}

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

// Blocking I/O with a deadline, for the handshake only.
void read_exact(int fd, void* buf, size_t n, Clock::time_point deadline, const char* what) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) throw Timeout(std::string("handshake: timed out waiting for ") + what);
    pollfd pfd{fd, POLLIN, 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(left));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
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

void write_all(int fd, const std::vector<uint8_t>& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("handshake: write failed: ") + std::strerror(errno));
    }
    done += static_cast<size_t>(w);
  }
}

// Reads one handshake frame into `buf`; returns its view.
wire::FrameView read_handshake_frame(int fd, std::vector<uint8_t>& buf, Clock::time_point deadline, const char* what) {
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

struct Session {
  int fd = -1;
  wire::Welcome welcome;
};

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
    std::this_thread::sleep_for(pause);
  }
  const auto deadline = Clock::now() + o.handshake_timeout;
  std::vector<uint8_t> buf;
  auto hello = wire::decode<wire::Hello>(read_handshake_frame(fd, buf, deadline, "hello"));
  if (hello.magic != wire::kMagic) throw ProtocolError(fmt::format("handshake: bad magic {:#x}", hello.magic));
  if (hello.version != wire::kProtocolVersion) {
    throw Error(fmt::format("the controller speaks protocol version {}, this worker speaks {}", hello.version,
                            wire::kProtocolVersion));
  }
  wire::HelloReply reply;
  reply.rank = o.rank;
  reply.nonce = transport::random_nonce();
  reply.mac = transport::prove(token, "worker", hello.nonce, o.rank);
  reply.device = device;
  write_all(fd, wire::encode_frame(reply));

  auto f = read_handshake_frame(fd, buf, deadline, "welcome");
  if (f.type == wire::MsgType::kReject) {
    throw Error("the controller refused this worker: " + wire::decode<wire::Reject>(f).reason);
  }
  Session s;
  s.fd = fd;
  s.welcome = wire::decode<wire::Welcome>(f);
  // The controller must prove the token too before we run anything it sends.
  if (!transport::same_mac(s.welcome.mac, transport::prove(token, "controller", reply.nonce, o.rank))) {
    throw Error("the controller failed to prove the shared token; refusing to run its messages");
  }
  return s;
}

// The controller's stream, read by the executor itself: while it waits for
// work it sleeps in read() on the socket, as a hand-written server would, so
// a message costs no hand-off between threads. (The I/O thread only sends
// heartbeats and watches for the controller's disappearance.)
//
// A message may itself wait for a particular answer from the controller
// (a rendezvous while a communicator is set up): wait_for() reads on,
// setting aside the frames that arrive meanwhile; next() hands those out
// first, in order.
class StreamReader {
 public:
  StreamReader(int fd, size_t max_frame) : fd_(fd), scanner_(max_frame), buf_(256 * 1024) {}

  // The next frame, or nullopt when the controller closed the stream. The
  // view is valid until the next call of next() or wait_for().
  std::optional<wire::FrameView> next() {
    if (!stash_.empty()) {
      current_ = std::move(stash_.front());
      stash_.pop_front();
      return wire::FrameView{static_cast<wire::MsgType>(current_[0]), current_.data() + 1, current_.size() - 1};
    }
    return next_from_socket();
  }

  // Reads until a frame of type `type` that `match` accepts arrives; frames
  // before it (heartbeats aside) are kept for next(). Returns a copy of the
  // frame's payload; nullopt when the stream closed.
  template <class Match>
  std::optional<std::vector<uint8_t>> wait_for(wire::MsgType type, Match&& match) {
    for (;;) {
      auto f = next_from_socket();
      if (!f) return std::nullopt;
      if (f->type == type && match(*f)) return std::vector<uint8_t>(f->payload, f->payload + f->size);
      if (f->type == wire::MsgType::kHeartbeat) continue;
      std::vector<uint8_t> copy(f->size + 1);
      copy[0] = static_cast<uint8_t>(f->type);
      std::memcpy(copy.data() + 1, f->payload, f->size);
      stash_.push_back(std::move(copy));
    }
  }

  bool idle() const noexcept { return idle_.load(std::memory_order_relaxed); }
  Clock::time_point last_receive() const noexcept {
    return Clock::time_point(Clock::duration(last_receive_.load(std::memory_order_relaxed)));
  }

 private:
  std::optional<wire::FrameView> next_from_socket() {
    for (;;) {
      std::optional<wire::FrameView> frame;
      size_t need = 0;
      const size_t used = scanner_.scan_one(buf_.data() + pos_, have_ - pos_, &frame, &need);
      if (frame) {
        pos_ += used;
        return frame;
      }
      // Nothing whole is left: keep the partial frame at the front.
      std::memmove(buf_.data(), buf_.data() + pos_, have_ - pos_);
      have_ -= pos_;
      pos_ = 0;
      if (need > buf_.size()) buf_.resize(need);
      if (!fill()) return std::nullopt;
    }
  }

  bool fill() {
    if (have_ == buf_.size()) buf_.resize(buf_.size() * 2);
    for (;;) {
      // The socket is normally blocking (nothing puts it in non-blocking
      // mode unless a write backs up), so this read is the whole wait.
      idle_.store(true, std::memory_order_relaxed);
      ssize_t n = ::read(fd_, buf_.data() + have_, buf_.size() - have_);
      idle_.store(false, std::memory_order_relaxed);
      if (n > 0) {
        have_ += static_cast<size_t>(n);
        last_receive_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
        return true;
      }
      if (n == 0) return false;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) throw Error(std::string("read failed: ") + std::strerror(errno));
      idle_.store(true, std::memory_order_relaxed);
      pollfd p{fd_, POLLIN, 0};
      ::poll(&p, 1, -1);
      idle_.store(false, std::memory_order_relaxed);
    }
  }

  const int fd_;
  wire::FrameScanner scanner_;
  std::vector<uint8_t> buf_;
  size_t pos_ = 0;   // start of the first frame not yet handed out
  size_t have_ = 0;  // bytes in buf_
  std::deque<std::vector<uint8_t>> stash_;  // type byte + payload
  std::vector<uint8_t> current_;
  std::atomic<bool> idle_{false};
  std::atomic<Clock::rep> last_receive_{Clock::now().time_since_epoch().count()};
};

// Forwards this process's stdout and stderr to the controller as Log
// messages, line by line, for workers whose output the controller does not
// pipe itself (attached ones). Each line also still goes where it went
// before, for the launcher's own logs.
class OutputForwarder {
 public:
  OutputForwarder(asio::io_context& io, transport::Channel& channel)
      : channel_(channel), streams_{Stream(io, 1, wire::Stream::kStdout), Stream(io, 2, wire::Stream::kStderr)} {}

  void start() {
    open_ = static_cast<int>(streams_.size());
    for (auto& st : streams_) {
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC) != 0) throw Error(std::string("pipe2 failed: ") + std::strerror(errno));
      st.saved = ::fcntl(st.fd, F_DUPFD_CLOEXEC, 3);
      std::fflush(st.fd == 1 ? stdout : stderr);
      ::dup2(fds[1], st.fd);
      ::close(fds[1]);
      st.pipe.assign(fds[0]);
      read(st);
    }
    g_diag_fd = streams_[1].saved;
  }

  // Puts stdout and stderr back and sends what is left (I/O thread must run).
  void finish(milliseconds timeout) {
    std::fflush(stdout);
    std::fflush(stderr);
    for (auto& st : streams_) ::dup2(st.saved, st.fd);  // closes the pipes' write ends: EOF
    g_diag_fd = 2;
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return open_ == 0; });
  }

 private:
  struct Stream {
    Stream(asio::io_context& io, int fd, wire::Stream kind) : fd(fd), kind(kind), pipe(io) {}
    int fd;
    wire::Stream kind;
    int saved = -1;
    asio::posix::stream_descriptor pipe;
    std::array<char, 4096> buf{};
    std::string partial;
  };

  void read(Stream& st) {
    st.pipe.async_read_some(asio::buffer(st.buf), [this, &st](const std::error_code& ec, size_t n) {
      if (n) {
        (void)!::write(st.saved, st.buf.data(), n);
        st.partial.append(st.buf.data(), n);
        size_t start = 0;
        for (size_t nl; (nl = st.partial.find('\n', start)) != std::string::npos; start = nl + 1) {
          send(st, std::string_view(st.partial).substr(start, nl - start));
        }
        st.partial.erase(0, start);
      }
      if (ec) {
        if (!st.partial.empty()) send(st, st.partial);
        st.partial.clear();
        std::error_code ignored;
        st.pipe.close(ignored);
        std::lock_guard<std::mutex> lk(mu_);
        --open_;
        cv_.notify_all();
        return;
      }
      read(st);
    });
  }
  void send(Stream& st, std::string_view line) {
    wire::Log log;
    log.stream = st.kind;
    log.line = std::string(line);
    frame_.clear();
    wire::encode_frame(log, frame_);
    channel_.send(frame_);
  }

  transport::Channel& channel_;
  std::array<Stream, 2> streams_;
  std::vector<uint8_t> frame_;
  std::mutex mu_;
  std::condition_variable cv_;
  int open_ = 0;
};

// Write failures on the channel mean the controller is gone.
struct WriteSide final : transport::Channel::Handler {
  explicit WriteSide(int rank) : rank(rank) {}
  void on_frames(const uint8_t*, size_t) override {}
  void on_closed(const std::string& reason) override {
    if (!stopping.load()) die(rank, "lost the controller: " + reason);
  }
  const int rank;
  std::atomic<bool> stopping{false};
};

class Executor {
 public:
  Executor(int rank, const at::Device& device, transport::Channel& out, StreamReader& in, std::string gloo_hostname)
      : rank_(rank), out_(out), in_(in), tensors_(rank, device, hooks(std::move(gloo_hostname))) {}

  // Runs one frame; returns false on shutdown.
  bool run(const wire::FrameView& f) {
    ++index_;
    switch (f.type) {
      case wire::MsgType::kHeartbeat:
        return true;
      case wire::MsgType::kSync: {
        const uint64_t id = wire::decode<wire::Sync>(f).id;
        // On a GPU, done means done on the device too.
        if (auto err = tensors_.synchronize()) report("sync", *err);
        reply_now(wire::SyncDone{id});
        return true;
      }
      case wire::MsgType::kShutdown:
        wire::decode<wire::Shutdown>(f);
        return false;
      case wire::MsgType::kEcho: {
        auto m = wire::decode<wire::Echo>(f);
        reply_now(wire::EchoReply{m.id, std::move(m.payload)});
        return true;
      }
      case wire::MsgType::kSeq: {
        const uint64_t n = wire::decode<wire::Seq>(f).n;
        if (n != next_seq_) {
          report("seq", fmt::format("sequence number {} arrived where {} was expected", n, next_seq_));
        }
        next_seq_ = n + 1;
        return true;
      }
      case wire::MsgType::kRaise:
        report("raise", wire::decode<wire::Raise>(f).message);
        return true;
      case wire::MsgType::kExit: {
        const int code = wire::decode<wire::Exit>(f).code;
        std::fflush(stdout);
        std::fflush(stderr);
        std::_Exit(code);
      }
      case wire::MsgType::kPrint: {
        auto m = wire::decode<wire::Print>(f);
        std::FILE* file = m.stream == wire::Stream::kStderr ? stderr : stdout;
        std::fprintf(file, "%s\n", m.text.c_str());
        std::fflush(file);
        return true;
      }
      case wire::MsgType::kOp:
        if (auto err = tensors_.run_op(f)) report("op", *err);
        return true;
      case wire::MsgType::kDefineOp:
        tensors_.define_op(wire::decode<wire::DefineOp>(f));
        return true;
      case wire::MsgType::kFree:
        tensors_.free(wire::decode<wire::Free>(f));
        return true;
      case wire::MsgType::kFetch:
        tensors_.fetch(wire::decode<wire::Fetch>(f));
        return true;
      case wire::MsgType::kPut:
        tensors_.put(wire::decode<wire::Put>(f));
        return true;
      case wire::MsgType::kSeed:
        tensors_.seed(wire::decode<wire::Seed>(f));
        return true;
      case wire::MsgType::kBackward:
        if (auto err = tensors_.backward(wire::decode<wire::Backward>(f))) report("backward", *err);
        return true;
      case wire::MsgType::kGrad:
        tensors_.grad(wire::decode<wire::Grad>(f));
        return true;
      case wire::MsgType::kGradMode:
        tensors_.grad_mode(wire::decode<wire::GradMode>(f));
        return true;
      case wire::MsgType::kLoadLibrary:
        tensors_.load_library(wire::decode<wire::LoadLibrary>(f));
        return true;
      case wire::MsgType::kCallRemote:
        tensors_.call_remote(wire::decode<wire::CallRemote>(f));
        return true;
      case wire::MsgType::kStats:
        tensors_.stats(wire::decode<wire::Stats>(f));
        return true;
      case wire::MsgType::kSleep:
        std::this_thread::sleep_for(milliseconds(wire::decode<wire::Sleep>(f).ms));
        return true;
      // Each decodes its frame before it may read the stream again (a
      // rendezvous), which invalidates the frame.
      case wire::MsgType::kCommInit:
        tensors_.comm_init(wire::decode<wire::CommInit>(f));
        return true;
      case wire::MsgType::kCollective:
        if (auto err = tensors_.collective(wire::decode<wire::Collective>(f))) report("barrier", *err);
        return true;
      case wire::MsgType::kTransfer:
        if (auto err = tensors_.transfer(wire::decode<wire::Transfer>(f))) report("to_mesh", *err);
        return true;
      default:
        throw ProtocolError(fmt::format("the controller sent a {} message, which only a worker sends",
                                        wire::to_string(f.type)));
    }
  }

 private:
  Tensors::Hooks hooks(std::string gloo_hostname) {
    Tensors::Hooks h;
    h.reply = [this](const wire::Reply& r) { reply_now(r); };
    h.reply_from_any_thread = [this](const wire::Reply& r) { out_.send_now(wire::encode_frame(r)); };
    h.rendezvous = [this](uint64_t comm, const std::string& blob) { return rendezvous(comm, blob); };
    h.gloo_hostname = std::move(gloo_hostname);
    return h;
  }

  // Sends this member's blob and reads on until the controller answers.
  std::vector<std::string> rendezvous(uint64_t comm, const std::string& blob) {
    reply_now(wire::Rendezvous{comm, blob});
    auto payload = in_.wait_for(wire::MsgType::kRendezvousReply, [&](const wire::FrameView& f) {
      return wire::decode<wire::RendezvousReply>(f).comm == comm;
    });
    if (!payload) throw Error("lost the controller during a rendezvous");
    auto reply = wire::decode<wire::RendezvousReply>(
        wire::FrameView{wire::MsgType::kRendezvousReply, payload->data(), payload->size()});
    if (!reply.ok) throw collectives::CommError("rendezvous failed: " + reply.error);
    return std::move(reply.blobs);
  }

  template <class M>
  void reply_now(const M& m) {
    buf_.clear();
    wire::encode_frame(m, buf_);
    out_.send_now(buf_);
  }
  void report(const std::string& op, const std::string& message) {
    wire::Error e;
    e.index = index_;
    e.op = op;
    e.message = message;
    reply_now(e);
  }

  const int rank_;
  transport::Channel& out_;
  StreamReader& in_;
  std::vector<uint8_t> buf_;
  uint64_t index_ = 0;
  uint64_t next_seq_ = 0;
  Tensors tensors_;
};

// The address this worker's Gloo listens on: $COX_GLOO_HOSTNAME, else the
// local address of its connection to the controller (an interface its
// peers can most likely reach too), else loopback for a local controller.
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

}  // namespace

int run_worker(const WorkerOptions& o) {
  COX_CHECK_ARG(o.rank >= 0, "--rank must be a non-negative integer, got {}", o.rank);
  // A locally spawned worker dies with its controller, even by SIGKILL.
  if (const char* parent = std::getenv("COX_PARENT_PID"); parent && *parent) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (std::to_string(::getppid()) != parent) die(o.rank, "the controller exited before this worker started");
  }
  std::string token = transport::load_worker_token();
  ::unsetenv(transport::kTokenEnv);  // not for anything this worker starts

  // The device first: a worker that cannot use its device says so before
  // it joins.
  std::string device_name = o.device;
  if (device_name.empty()) {
    const char* env = std::getenv("COX_DEVICE");
    device_name = env && *env ? env : default_device(o.rank);
  }
  if (device_name == "cuda") {
    device_name = default_device(o.rank);
    COX_CHECK_ARG(device_name != "cpu",
                  "device 'cuda': no CUDA device is visible to this worker, or its libtorch has no CUDA");
  }
  at::Device device(at::kCPU);
  try {
    device = at::Device(device_name);
  } catch (const std::exception&) {
    throw InvalidArgument(fmt::format("device '{}' is neither cpu, cuda nor cuda:N", device_name));
  }
  COX_CHECK_ARG(device.is_cpu() || device.is_cuda(), "device '{}' is neither cpu, cuda nor cuda:N", device_name);

  Session s = connect_and_handshake(o, token, device.str());
  const milliseconds hb_interval(s.welcome.heartbeat_interval_ms);
  const milliseconds hb_timeout(s.welcome.heartbeat_timeout_ms);

  asio::io_context io;
  transport::Socket socket(io);
  sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&ss), &sl);
  socket.assign(asio::generic::stream_protocol(ss.ss_family, ss.ss_family == AF_UNIX ? 0 : IPPROTO_TCP), s.fd);

  WriteSide write_side(o.rank);
  auto channel = std::make_shared<transport::Channel>(std::move(socket), s.welcome.max_frame, &write_side);
  StreamReader reader(s.fd, s.welcome.max_frame);

  // Heartbeats out, and the controller watched, on the I/O thread, so that a
  // long operation on the executor changes neither.
  asio::steady_timer heartbeat(io);
  const std::vector<uint8_t> hb_frame = wire::encode_frame(wire::Heartbeat{});
  std::function<void()> beat = [&] {
    heartbeat.expires_after(hb_interval);
    heartbeat.async_wait([&](const std::error_code& ec) {
      if (ec) return;
      pollfd p{s.fd, POLLRDHUP, 0};
      if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) && !write_side.stopping.load()) {
        die(o.rank, "lost the controller: connection closed");
      }
      const auto silent = std::chrono::duration_cast<milliseconds>(Clock::now() - reader.last_receive());
      if (reader.idle() && silent > hb_timeout) {
        die(o.rank, fmt::format("no message from the controller for {} ms", silent.count()));
      }
      // Written directly, not through an asynchronous write, which would
      // switch the socket to non-blocking mode under the executor's reads.
      channel->send_now(hb_frame);
      beat();
    });
  };
  beat();
  // Attached workers send their output to the controller; a local one's
  // output reaches it through the pipes its controller made.
  const bool forward_output = !std::getenv("COX_PARENT_PID") || !*std::getenv("COX_PARENT_PID");
  std::optional<OutputForwarder> forwarder;
  if (forward_output) {
    forwarder.emplace(io, *channel);
    forwarder->start();
  }
  std::thread io_thread([&] {
    pthread_setname_np(pthread_self(), ("cox-w" + std::to_string(o.rank) + "-io").substr(0, 15).c_str());
    io.run();
  });

  install_caching_cpu_allocator();
  ops_detail::ensure_registered();  // Coxswain's own ops (fused optimizers)
  std::optional<Executor> exec_holder;
  try {
    exec_holder.emplace(o.rank, device, *channel, reader, gloo_hostname(s.fd));
  } catch (const std::exception& e) {
    die(o.rank, std::string("cannot use device ") + device.str() + ": " + e.what());
  }
  Executor& exec = *exec_holder;
  bool shut_down = false;
  try {
    for (;;) {
      auto f = reader.next();
      if (!f) break;
      if (!exec.run(*f)) {
        shut_down = true;
        break;
      }
    }
  } catch (const ProtocolError& e) {
    die(o.rank, std::string("protocol error in the controller's stream: ") + e.what());
  } catch (const Error& e) {
    die(o.rank, std::string("lost the controller: ") + e.what());
  } catch (const std::exception& e) {
    // A CUDA error that poisons the device (a failed device-side assert)
    // surfaces wherever the next call touches it: nothing here can go on.
    die(o.rank, std::string("fatal: ") + e.what());
  }
  if (!shut_down) die(o.rank, "lost the controller: connection closed");
  write_side.stopping.store(true);
  if (forwarder) forwarder->finish(milliseconds(1000));
  // Everything answered so far reaches the controller before we go.
  channel->flush_blocking(milliseconds(2000));
  asio::post(io, [&] {
    heartbeat.cancel();
    channel->close("worker shut down");
    io.stop();
  });
  io_thread.join();
  return 0;
}

}  // namespace cox::worker
