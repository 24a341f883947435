// The controller runtime: launch, handshake, supervision, dispatch, sync.
#include "controller/controller_impl.hpp"

#include "common/check.hpp"
#include "controller/launcher.hpp"
#include "transport/auth.hpp"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <asio/connect.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <future>
#include <iostream>

namespace cox {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {
constexpr int kSpinMicros = 100;
}  // namespace

// A connection between accept and authentication.
struct Controller::Impl::Handshake {
  explicit Handshake(transport::Socket s) : socket(std::move(s)), timer(socket.get_executor()) {}
  transport::Socket socket;
  asio::steady_timer timer;
  wire::Nonce nonce{};
  std::vector<uint8_t> out;
  std::array<uint8_t, wire::kMaxHandshakeFrame> in{};
  uint32_t len = 0;
  bool done = false;
};

// ---------------------------------------------------------------------------
// Public API

OutputSink default_output_sink() {
  return [](int rank, OutputStream stream, std::string_view line) {
    std::FILE* f = stream == OutputStream::kStderr ? stderr : stdout;
    std::fprintf(f, "[worker %d] %.*s\n", rank, static_cast<int>(line.size()), line.data());
    std::fflush(f);
  };
}

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Controller::Controller(Controller&&) noexcept = default;
Controller& Controller::operator=(Controller&& other) noexcept {
  if (this != &other) {
    if (impl_) {
      try {
        impl_->shutdown();
      } catch (...) {
      }
    }
    impl_ = std::move(other.impl_);
  }
  return *this;
}
Controller::~Controller() {
  if (impl_) {
    try {
      impl_->shutdown();
    } catch (...) {
    }
  }
}

Controller Controller::local(ControllerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options), Impl::Mode::kLocal);
  impl->start();
  return Controller(std::move(impl));
}

Controller Controller::attach(ControllerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options), Impl::Mode::kAttach);
  impl->start();
  return Controller(std::move(impl));
}

int Controller::size() const noexcept { return impl_ ? impl_->size() : 0; }
void Controller::sync(std::optional<milliseconds> timeout) { impl_->sync(timeout); }
std::chrono::nanoseconds Controller::ping(int rank, std::optional<milliseconds> timeout) {
  return impl_->ping(rank, timeout);
}
void Controller::shutdown() {
  if (impl_) impl_->shutdown();
}
int64_t Controller::worker_pid(int rank) const { return impl_->worker_pid(rank); }
std::string Controller::device(int rank) const { return impl_->device(rank); }
std::vector<int> Controller::lost_workers() const { return impl_->lost_workers(); }
AttachInfo Controller::attach_info() const { return impl_->attach_info(); }

// ---------------------------------------------------------------------------
// Construction, start-up, shutdown

Controller::Impl::Impl(ControllerOptions options, Mode mode)
    : opts_(std::move(options)), mode_(mode), heartbeat_timer_(io_) {
  std::vector<std::string> devices;
  if (mode_ == Mode::kLocal) devices = plan_devices();
  COX_CHECK_ARG(opts_.workers > 0, "ControllerOptions::workers must be positive, got {}", opts_.workers);
  COX_CHECK_ARG(opts_.startup_timeout.count() > 0, "startup_timeout must be positive, got {} ms",
                opts_.startup_timeout.count());
  COX_CHECK_ARG(opts_.heartbeat_interval.count() > 0, "heartbeat_interval must be positive, got {} ms",
                opts_.heartbeat_interval.count());
  COX_CHECK_ARG(opts_.heartbeat_timeout > opts_.heartbeat_interval,
                "heartbeat_timeout ({} ms) must exceed heartbeat_interval ({} ms)", opts_.heartbeat_timeout.count(),
                opts_.heartbeat_interval.count());
  COX_CHECK_ARG(opts_.max_frame_bytes >= 4096 && opts_.max_frame_bytes <= 0xffffffffu,
                "max_frame_bytes must be in [4096, 2^32-1], got {}", opts_.max_frame_bytes);
  if (!opts_.output_sink) opts_.output_sink = default_output_sink();
  token_ = opts_.token.empty() ? transport::generate_token() : opts_.token;
  for (int r = 0; r < opts_.workers; ++r) {
    workers_.push_back(std::make_unique<Worker>(*this, r, io_));
    if (!devices.empty()) workers_.back()->spawn_device = devices[static_cast<size_t>(r)];
  }
  wire::encode_frame(wire::Heartbeat{}, heartbeat_frame_);
}

// Local workers: the device of each (and their number, when not given).
std::vector<std::string> Controller::Impl::plan_devices() {
  std::string d = opts_.device;
  if (const char* env = std::getenv("COX_DEVICE"); d == "auto" && env && *env) {
    COX_CHECK_ARG(std::string(env) == "cpu" || std::string(env) == "cuda" || std::string(env) == "auto",
                  "$COX_DEVICE must be auto, cuda or cpu, got '{}'", env);
    d = env;
  }
  COX_CHECK_ARG(d == "auto" || d == "cuda" || d == "cpu", "ControllerOptions::device must be auto, cuda or cpu, got '{}'",
                d);
  COX_CHECK_ARG(opts_.workers >= 0, "ControllerOptions::workers must be positive (or 0: one per GPU), got {}",
                opts_.workers);
  const int visible = at::detail::getCUDAHooks().getNumGPUs();
  // (Without a driver, a CUDA libtorch sees no GPU either.)
  COX_CHECK_ARG(d != "cuda" || visible > 0,
                "ControllerOptions::device is 'cuda' but no GPU is visible (no device or driver, or a libtorch "
                "without CUDA)");
  COX_CHECK_ARG(d == "cuda" || opts_.gpus.empty() || visible > 0,
                "ControllerOptions::gpus names GPUs, but none is visible (no device or driver, or a libtorch "
                "without CUDA)");
  const bool gpu = d == "cuda" || (d == "auto" && visible > 0);
  std::vector<std::string> out;
  if (!gpu) {
    if (opts_.workers == 0) opts_.workers = 1;
    out.assign(static_cast<size_t>(opts_.workers), "cpu");
    return out;
  }
  std::vector<int> gpus = opts_.gpus;
  if (gpus.empty()) {
    for (int i = 0; i < visible; ++i) gpus.push_back(i);
  }
  for (size_t i = 0; i < gpus.size(); ++i) {
    COX_CHECK_ARG(gpus[i] >= 0 && gpus[i] < visible, "ControllerOptions::gpus[{}] = {}: only GPUs 0..{} are visible", i,
                  gpus[i], visible - 1);
  }
  if (opts_.workers == 0) opts_.workers = static_cast<int>(gpus.size());
  for (int r = 0; r < opts_.workers; ++r) out.push_back(fmt::format("cuda:{}", gpus[static_cast<size_t>(r) % gpus.size()]));
  shared_gpus_ = opts_.workers > static_cast<int>(gpus.size());
  return out;
}

Controller::Impl::~Impl() {
  try {
    shutdown();
  } catch (...) {
  }
}

void Controller::Impl::start() {
  try {
    listen();
    io_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "cox-ctl-io");
      io_.run();
    });
    if (mode_ == Mode::kLocal) {
      // Spawned from the I/O thread: a worker's parent-death signal follows
      // the thread that created it, and this one lives as long as we do.
      std::promise<void> spawned;
      auto done = spawned.get_future();
      asio::post(io_, [&] {
        try {
          spawn_all();
          spawned.set_value();
        } catch (...) {
          spawned.set_exception(std::current_exception());
        }
      });
      done.get();
    } else if (opts_.on_listening) {
      opts_.on_listening(attach_info());
    }

    std::unique_lock<std::mutex> lk(mu_);
    const bool all = wait_for(lk, opts_.startup_timeout, {}, [&] { return connected_ == size(); });
    if (!all) {
      std::vector<int> missing;
      for (auto& w : workers_) {
        if (!w->connected) missing.push_back(w->rank);
      }
      std::string why;
      if (!rejected_.empty()) why = fmt::format("; refused connections: {}", fmt::join(rejected_, "; "));
      throw Timeout(fmt::format("start-up: worker{} [{}] of {} did not connect to {} within {} ms{}",
                                missing.size() == 1 ? "" : "s", fmt::join(missing, ", "), size(), endpoint_,
                                opts_.startup_timeout.count(), why));
    }
    lk.unlock();
    asio::post(io_, [this] {
      std::error_code ignored;
      if (acceptor_) acceptor_->close(ignored);
      if (!socket_dir_.empty()) {
        ::unlink((socket_dir_ + "/controller.sock").c_str());
        ::rmdir(socket_dir_.c_str());
      }
      heartbeat_timer_.expires_after(opts_.heartbeat_interval);
      heartbeat_timer_.async_wait([this](const std::error_code& ec) {
        if (!ec) on_heartbeat_timer();
      });
    });
  } catch (...) {
    shutdown();
    throw;
  }
}

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

void Controller::Impl::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    shutting_down_ = true;
  }
  if (engine_) tensor::detach_engine(*engine_);
  if (io_thread_.joinable()) {
    // Ask every live worker to finish its stream and exit.
    std::vector<uint8_t> bye = wire::encode_frame(wire::Shutdown{});
    for (auto& w : workers_) {
      if (w->channel && !w->lost_flag.load()) w->channel->send_now(bye);
    }
    // Wait for them to go: local ones until reaped, attached ones until
    // their connection closes.
    auto gone = [&] {
      for (auto& w : workers_) {
        if (w->pid > 0 ? !w->exited : (w->channel && !w->channel->closed())) return false;
      }
      return true;
    };
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_for(lk, opts_.shutdown_timeout, gone)) {
      lk.unlock();
      std::promise<void> killed;
      asio::post(io_, [&] {
        for (auto& w : workers_) kill_child(*w);
        killed.set_value();
      });
      killed.get_future().wait();
      lk.lock();
      cv_.wait_for(lk, milliseconds(2000), gone);
    }
    lk.unlock();
    asio::post(io_, [this] {
      std::error_code ignored;
      heartbeat_timer_.cancel();
      if (acceptor_) acceptor_->close(ignored);
      for (auto& w : workers_) {
        if (w->channel) w->channel->close("controller shut down");
        w->stdout_pipe.close(ignored);
        w->stderr_pipe.close(ignored);
        w->pidfd.close(ignored);
        w->exit_timer.cancel();
        w->grace_timer.cancel();
      }
      io_.stop();
    });
    io_thread_.join();
  }
  // Reap whatever the I/O thread did not (a child that exited as it stopped).
  for (auto& w : workers_) {
    if (w->pid > 0 && !w->exited) {
      int status = 0;
      if (::waitpid(w->pid, &status, WNOHANG) == 0) {
        ::kill(w->pid, SIGKILL);
        ::waitpid(w->pid, &status, 0);
      }
      w->exited = true;
    }
  }
  if (!socket_dir_.empty()) {
    ::unlink((socket_dir_ + "/controller.sock").c_str());
    ::rmdir(socket_dir_.c_str());
  }
}

// ---------------------------------------------------------------------------
// Local workers: spawn, output, exit

void Controller::Impl::spawn_all() {
  const std::string path = controller::find_worker_binary(opts_.worker_path);
  // Workers share this machine's cores: each gets its share of intra-op
  // threads (as torchrun does), unless the user chose a number.
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const int cores = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
  const std::string threads = std::to_string(std::max(1, cores / std::max(1, size())));
  for (auto& w : workers_) {
    std::vector<std::pair<std::string, std::string>> env;
    if (opts_.worker_env) env = opts_.worker_env(w->rank);
    // Set here or in this process's environment: the user chose.
    auto set = [&](const char* name) {
      return std::getenv(name) || std::any_of(env.begin(), env.end(), [&](const auto& kv) { return kv.first == name; });
    };
    if (!set("OMP_NUM_THREADS")) env.emplace_back("OMP_NUM_THREADS", threads);
    if (shared_gpus_) {
      // NCCL refuses two ranks of one host on one GPU; distinct host ids make
      // them look like separate hosts, which talk over loopback sockets.
      if (!set("NCCL_HOSTID")) env.emplace_back("NCCL_HOSTID", fmt::format("cox-{}-rank{}", ::getpid(), w->rank));
      if (!set("NCCL_SOCKET_IFNAME")) env.emplace_back("NCCL_SOCKET_IFNAME", "lo");
    }
    env.emplace_back(transport::kTokenEnv, token_);
    env.emplace_back("COX_PARENT_PID", std::to_string(::getpid()));
    std::vector<std::string> args{"--connect", endpoint_, "--rank", std::to_string(w->rank)};
    if (!w->spawn_device.empty()) {
      args.push_back("--device");
      args.push_back(w->spawn_device);
    }
    controller::Spawned s = controller::spawn_process(path, args, env);
    w->pid = s.pid;
    w->stdout_pipe.assign(s.stdout_fd);
    w->stderr_pipe.assign(s.stderr_fd);
    w->pipes_open[0] = w->pipes_open[1] = true;
    if (s.pidfd >= 0) w->pidfd.assign(s.pidfd);
    read_output(*w, false);
    read_output(*w, true);
    watch_child(*w);
  }
}

void Controller::Impl::watch_child(Worker& w) {
  if (w.pidfd.is_open()) {
    w.pidfd.async_wait(asio::posix::stream_descriptor::wait_read, [this, &w](const std::error_code& ec) {
      if (!ec) on_child_exit(w);
    });
  } else {
    // No pidfd (old kernel or sandbox): poll.
    w.exit_timer.expires_after(milliseconds(50));
    w.exit_timer.async_wait([this, &w](const std::error_code& ec) {
      if (ec) return;
      int status;
      if (::waitpid(w.pid, &status, WNOHANG) == w.pid) {
        {
          std::lock_guard<std::mutex> lk(mu_);
          w.exit_status = status;
        }
        on_child_exit(w);
      } else {
        watch_child(w);
      }
    });
  }
}

void Controller::Impl::on_child_exit(Worker& w) {
  int status = 0;
  if (w.pidfd.is_open()) {
    if (::waitpid(w.pid, &status, WNOHANG) != w.pid) {
      watch_child(w);  // spurious
      return;
    }
  } else {
    std::lock_guard<std::mutex> lk(mu_);
    status = w.exit_status;
  }
  // Take the last of its output before reporting, so that WorkerLost can
  // quote its dying words.
  for (int err = 0; err < 2; ++err) {
    auto& pipe = err ? w.stderr_pipe : w.stdout_pipe;
    if (!pipe.is_open()) continue;
    ::fcntl(pipe.native_handle(), F_SETFL, ::fcntl(pipe.native_handle(), F_GETFL) | O_NONBLOCK);
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(pipe.native_handle(), buf, sizeof buf);
      if (n > 0) {
        on_output(w, err, buf, static_cast<size_t>(n), false);
        continue;
      }
      on_output(w, err, nullptr, 0, true);
      break;
    }
    std::error_code ignored;
    pipe.close(ignored);
  }
  std::error_code ignored;
  w.pidfd.close(ignored);
  w.exit_timer.cancel();
  w.grace_timer.cancel();
  bool expected;
  {
    std::lock_guard<std::mutex> lk(mu_);
    w.exited = true;
    w.exit_status = status;
    expected = shutting_down_ && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  if (!expected) mark_lost(w, fmt::format("process {} {}", w.pid, controller::describe_exit(status)));
  if (w.channel) w.channel->close("worker process exited");
  cv_.notify_all();
}

void Controller::Impl::kill_child(Worker& w) {
  bool alive;
  {
    std::lock_guard<std::mutex> lk(mu_);
    alive = w.pid > 0 && !w.exited;
  }
  if (alive) ::kill(w.pid, SIGKILL);
}

void Controller::Impl::read_output(Worker& w, bool err) {
  auto& pipe = err ? w.stderr_pipe : w.stdout_pipe;
  auto& buf = err ? w.err_buf : w.out_buf;
  pipe.async_read_some(asio::buffer(buf), [this, &w, err, &buf](const std::error_code& ec, size_t n) {
    if (ec == asio::error::operation_aborted) return;
    if (n) on_output(w, err, buf.data(), n, false);
    if (ec) {
      on_output(w, err, nullptr, 0, true);
      std::error_code ignored;
      (err ? w.stderr_pipe : w.stdout_pipe).close(ignored);
      return;
    }
    read_output(w, err);
  });
}

void Controller::Impl::on_output(Worker& w, bool err, const char* data, size_t n, bool eof) {
  std::string& partial = err ? w.err_partial : w.out_partial;
  partial.append(data ? data : "", n);
  auto emit = [&](std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    opts_.output_sink(w.rank, err ? OutputStream::kStderr : OutputStream::kStdout, line);
    if (err && opts_.stderr_lines_kept) {
      std::lock_guard<std::mutex> lk(mu_);
      w.last_stderr.emplace_back(line);
      while (w.last_stderr.size() > opts_.stderr_lines_kept) w.last_stderr.pop_front();
    }
  };
  size_t start = 0;
  for (size_t nl; (nl = partial.find('\n', start)) != std::string::npos; start = nl + 1) {
    emit(std::string_view(partial).substr(start, nl - start));
  }
  partial.erase(0, start);
  if (eof && !partial.empty()) {
    emit(partial);
    partial.clear();
  }
}

// ---------------------------------------------------------------------------
// Accepting and authenticating workers

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
  auto hs = std::make_shared<Handshake>(std::move(socket));
  hs->nonce = transport::random_nonce();
  wire::Hello hello;
  hello.nonce = hs->nonce;
  wire::encode_frame(hello, hs->out);
  // A peer gets a bounded time to prove itself, whatever it does.
  hs->timer.expires_after(std::min<milliseconds>(opts_.startup_timeout, milliseconds(10000)));
  hs->timer.async_wait([this, hs](const std::error_code& ec) {
    if (!ec && !hs->done) reject(hs, "handshake not completed in time", false);
  });
  asio::async_write(hs->socket, asio::buffer(hs->out), [this, hs](const std::error_code& ec, size_t) {
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
      wire::HelloReply reply;
      try {
        reply = wire::decode<wire::HelloReply>(
            wire::FrameView{static_cast<wire::MsgType>(hs->in[0]), hs->in.data() + 1, hs->len - 1u});
      } catch (const ProtocolError& e) {
        return reject(hs, std::string("bad hello reply: ") + e.what(), false);
      }
      finish_handshake(hs, reply);
    });
  });
}

void Controller::Impl::finish_handshake(const std::shared_ptr<Handshake>& hs, const wire::HelloReply& reply) {
  if (reply.magic != wire::kMagic) return reject(hs, fmt::format("bad magic {:#x}", reply.magic), false);
  if (reply.version != wire::kProtocolVersion) {
    return reject(hs, fmt::format("worker speaks protocol version {}, this controller speaks {}", reply.version,
                                  wire::kProtocolVersion),
                  true);
  }
  // Authenticate before anything else: an unproven peer learns nothing more.
  if (!transport::same_mac(reply.mac, transport::prove(token_, "worker", hs->nonce, reply.rank))) {
    return reject(hs, fmt::format("authentication failed (claimed rank {})", reply.rank), true);
  }
  if (reply.rank < 0 || reply.rank >= size()) {
    return reject(hs, fmt::format("rank {} out of range for {} workers", reply.rank, size()), true);
  }
  Worker& w = *workers_[static_cast<size_t>(reply.rank)];
  bool taken;
  {
    std::lock_guard<std::mutex> lk(mu_);
    taken = w.connected || w.lost || shutting_down_;
  }
  if (taken) return reject(hs, fmt::format("rank {} is already connected", reply.rank), true);
  {
    std::lock_guard<std::mutex> lk(mu_);
    w.device = reply.device;
  }

  hs->done = true;
  hs->timer.cancel();
  wire::Welcome welcome;
  welcome.mac = transport::prove(token_, "controller", reply.nonce, reply.rank);
  welcome.world_size = size();
  welcome.heartbeat_interval_ms = static_cast<uint32_t>(opts_.heartbeat_interval.count());
  welcome.heartbeat_timeout_ms = static_cast<uint32_t>(opts_.heartbeat_timeout.count());
  welcome.max_frame = opts_.max_frame_bytes;
  w.channel = std::make_shared<transport::Channel>(std::move(hs->socket), opts_.max_frame_bytes, &w);
  w.channel->send_now(wire::encode_frame(welcome));
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
    auto bytes = wire::encode_frame(wire::Reject{reason});
    ::send(hs->socket.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  hs->socket.shutdown(asio::socket_base::shutdown_both, ignored);
  hs->socket.close(ignored);
  cv_.notify_all();
}

// ---------------------------------------------------------------------------
// Messages from workers, loss, heartbeats

void Controller::Impl::on_frames(Worker& w, const uint8_t* data, size_t n) {
  bool wake = false;
  transport::for_each_frame(data, n, [&](const wire::FrameView& f) {
    switch (f.type) {
      case wire::MsgType::kHeartbeat:
        break;
      case wire::MsgType::kSyncDone: {
        auto m = wire::decode<wire::SyncDone>(f);
        std::lock_guard<std::mutex> lk(mu_);
        w.synced = m.id;
        wake = true;
        break;
      }
      case wire::MsgType::kEchoReply: {
        auto m = wire::decode<wire::EchoReply>(f);
        std::lock_guard<std::mutex> lk(mu_);
        w.echoed = m.id;
        wake = true;
        break;
      }
      case wire::MsgType::kError: {
        auto m = wire::decode<wire::Error>(f);
        std::lock_guard<std::mutex> lk(mu_);
        if (!first_error_) first_error_ = std::make_exception_ptr(RemoteError(w.rank, m.op, m.message));
        wake = true;
        break;
      }
      case wire::MsgType::kReply: {
        auto m = wire::decode<wire::Reply>(f);
        std::lock_guard<std::mutex> lk(mu_);
        replies_[m.request] = std::move(m);
        wake = true;
        break;
      }
      case wire::MsgType::kRendezvous:
        on_rendezvous(w, wire::decode<wire::Rendezvous>(f));
        break;
      case wire::MsgType::kLog: {
        auto m = wire::decode<wire::Log>(f);
        const bool err = m.stream == wire::Stream::kStderr;
        m.line.push_back('\n');
        on_output(w, err, m.line.data(), m.line.size(), false);
        break;
      }
      default:
        throw ProtocolError(fmt::format("worker {} sent a {} message, which only a controller sends", w.rank,
                                        wire::to_string(f.type)));
    }
  });
  if (wake) {
    events_.fetch_add(1, std::memory_order_release);
    cv_.notify_all();
  }
}

void Controller::Impl::on_closed(Worker& w, const std::string& reason) {
  bool expected;
  {
    std::lock_guard<std::mutex> lk(mu_);
    expected = shutting_down_ || w.exited;
  }
  if (expected) {
    cv_.notify_all();
    return;
  }
  if (w.pid > 0) {
    // A local worker's exit status says more than the closed socket: give
    // the child a moment to be reaped (by its watcher) before declaring it
    // lost without one.
    w.grace_timer.expires_after(milliseconds(2000));
    w.grace_timer.async_wait([this, &w, reason](const std::error_code& ec) {
      if (ec) return;
      mark_lost(w, "connection lost (" + reason + ") and the process did not exit; killed it");
      kill_child(w);
    });
    return;
  }
  mark_lost(w, "connection lost: " + reason);
}

void Controller::Impl::mark_lost(Worker& w, const std::string& reason) {
  std::vector<std::pair<int, std::vector<uint8_t>>> replies;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (w.lost) return;
    w.lost = std::make_exception_ptr(
        WorkerLost(w.rank, reason, std::vector<std::string>(w.last_stderr.begin(), w.last_stderr.end())));
    w.lost_flag.store(true);
    // No communicator that needs this worker can form now.
    for (auto& [comm, r] : rendezvous_) {
      if (std::find(r.ranks.begin(), r.ranks.end(), w.rank) != r.ranks.end()) {
        fail_rendezvous_locked(comm, fmt::format("worker {} was lost before it joined: {}", w.rank, reason), replies);
      }
    }
  }
  send_replies(replies);
  events_.fetch_add(1, std::memory_order_release);
  cv_.notify_all();
}

// ---------------------------------------------------------------------------
// Rendezvous of communicators

void Controller::Impl::expect_rendezvous(uint64_t comm, const std::vector<int>& ranks) {
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    Rendezvous& r = rendezvous_[comm];
    r.ranks = ranks;
    r.blobs.assign(ranks.size(), std::nullopt);
    for (int rank : ranks) {
      if (workers_[static_cast<size_t>(rank)]->lost) {
        fail_rendezvous_locked(comm, fmt::format("worker {} is lost", rank), out);
        break;
      }
    }
  }
  send_replies(out);
}

void Controller::Impl::fail_rendezvous(uint64_t comm, const std::string& why) {
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    fail_rendezvous_locked(comm, why, out);
  }
  send_replies(out);
}

void Controller::Impl::fail_rendezvous_locked(uint64_t comm, const std::string& why,
                                              std::vector<std::pair<int, std::vector<uint8_t>>>& out) {
  auto it = rendezvous_.find(comm);
  if (it == rendezvous_.end() || !it->second.failed.empty()) return;
  Rendezvous& r = it->second;
  r.failed = why;
  wire::RendezvousReply reply;
  reply.comm = comm;
  reply.ok = false;
  reply.error = why;
  const auto frame = wire::encode_frame(reply);
  // Those who are waiting hear now; the rest when they arrive.
  for (size_t i = 0; i < r.ranks.size(); ++i) {
    if (r.blobs[i]) out.emplace_back(r.ranks[i], frame);
  }
}

void Controller::Impl::send_replies(std::vector<std::pair<int, std::vector<uint8_t>>>& out) {
  for (auto& [rank, frame] : out) {
    Worker& w = *workers_[static_cast<size_t>(rank)];
    if (w.channel && !w.lost_flag.load()) w.channel->send(frame);
  }
}

void Controller::Impl::on_rendezvous(Worker& w, wire::Rendezvous m) {
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = rendezvous_.find(m.comm);
    if (it == rendezvous_.end()) {
      throw ProtocolError(fmt::format("worker {} joined communicator {}, which is not being set up", w.rank, m.comm));
    }
    Rendezvous& r = it->second;
    const auto me = std::find(r.ranks.begin(), r.ranks.end(), w.rank);
    if (me == r.ranks.end() || r.blobs[static_cast<size_t>(me - r.ranks.begin())]) {
      throw ProtocolError(fmt::format("worker {} joined communicator {} as a member it is not", w.rank, m.comm));
    }
    auto& slot = r.blobs[static_cast<size_t>(me - r.ranks.begin())];
    slot = std::move(m.blob);
    ++r.have;
    if (!r.failed.empty()) {
      wire::RendezvousReply reply;
      reply.comm = m.comm;
      reply.ok = false;
      reply.error = r.failed;
      out.emplace_back(w.rank, wire::encode_frame(reply));
      if (r.have == r.ranks.size()) rendezvous_.erase(it);
    } else if (r.have == r.ranks.size()) {
      wire::RendezvousReply reply;
      reply.comm = m.comm;
      for (auto& b : r.blobs) reply.blobs.push_back(std::move(*b));
      const auto frame = wire::encode_frame(reply);
      for (int rank : r.ranks) out.emplace_back(rank, frame);
      rendezvous_.erase(it);
    }
  }
  send_replies(out);
}

void Controller::Impl::await_loss(const std::vector<int>& ranks, std::chrono::milliseconds limit) {
  std::unique_lock<std::mutex> lk(mu_);
  auto lost = [&]() -> std::exception_ptr {
    for (int r : ranks) {
      if (r >= 0 && r < size() && workers_[static_cast<size_t>(r)]->lost) return workers_[static_cast<size_t>(r)]->lost;
    }
    return nullptr;
  };
  cv_.wait_for(lk, limit, [&] { return lost() != nullptr || shut_down_; });
  if (auto e = lost()) std::rethrow_exception(e);
}

void Controller::Impl::on_heartbeat_timer() {
  const auto now = Clock::now();
  for (auto& w : workers_) {
    if (!w->channel || w->lost_flag.load() || w->channel->closed()) continue;
    w->channel->send(heartbeat_frame_);
    const auto silent = std::chrono::duration_cast<milliseconds>(now - w->channel->last_receive());
    if (silent > opts_.heartbeat_timeout) {
      mark_lost(*w, fmt::format("no message or heartbeat for {} ms (heartbeat_timeout {} ms)", silent.count(),
                                opts_.heartbeat_timeout.count()));
      kill_child(*w);
      w->channel->close("heartbeat timeout");
    }
  }
  heartbeat_timer_.expires_after(opts_.heartbeat_interval);
  heartbeat_timer_.async_wait([this](const std::error_code& ec) {
    if (!ec) on_heartbeat_timer();
  });
}

// ---------------------------------------------------------------------------
// Waiting: sync, ping

void Controller::Impl::bad_rank(int rank) const {
  throw InvalidArgument(fmt::format("worker rank {} out of range for {} workers", rank, size()));
}

void Controller::Impl::throw_lost(int rank) const {
  std::lock_guard<std::mutex> lk(mu_);
  std::rethrow_exception(workers_[static_cast<size_t>(rank)]->lost);
}

template <class Pred>
bool Controller::Impl::wait_for(std::unique_lock<std::mutex>& lk, std::optional<milliseconds> timeout,
                                const std::vector<int>& ranks, Pred pred) {
  auto lost = [&]() -> std::exception_ptr {
    if (ranks.empty()) {
      for (auto& w : workers_) {
        if (w->lost) return w->lost;
      }
    } else {
      for (int r : ranks) {
        if (workers_[static_cast<size_t>(r)]->lost) return workers_[static_cast<size_t>(r)]->lost;
      }
    }
    return nullptr;
  };
  auto ready = [&] { return pred() || lost() != nullptr; };
  // Replies to a waiting caller usually come within tens of microseconds:
  // spin on the event counter for a moment before paying for a sleep and a
  // wake-up.
  const auto spin_until = Clock::now() + std::chrono::microseconds(kSpinMicros);
  while (!ready() && Clock::now() < spin_until) {
    const uint64_t seen = events_.load(std::memory_order_acquire);
    lk.unlock();
    while (events_.load(std::memory_order_acquire) == seen && Clock::now() < spin_until) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    lk.lock();
  }
  if (timeout) {
    if (!cv_.wait_for(lk, *timeout, ready)) return false;
  } else {
    cv_.wait(lk, ready);
  }
  if (auto e = lost(); e && !pred()) std::rethrow_exception(e);
  return true;
}

void Controller::Impl::rethrow_first_error(std::unique_lock<std::mutex>&) {
  if (first_error_) {
    auto e = first_error_;
    first_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void Controller::Impl::sync(std::optional<milliseconds> timeout) {
  std::vector<int> all(static_cast<size_t>(size()));
  for (int r = 0; r < size(); ++r) all[static_cast<size_t>(r)] = r;
  sync_ranks(all, timeout);
}

void Controller::Impl::wake(std::vector<std::shared_ptr<transport::Channel>>& channels) {
  if (channels.empty()) return;
  asio::post(io_, [cs = std::move(channels)] {
    for (auto& c : cs) c->start_write();
  });
  channels.clear();
}

void Controller::Impl::post_now(int rank, const std::vector<uint8_t>& bytes) {
  Worker& w = worker(rank);
  if (w.lost_flag.load(std::memory_order_relaxed)) throw_lost(rank);
  w.channel->send_now(bytes);
}

void Controller::Impl::sync_ranks(const std::vector<int>& ranks, std::optional<milliseconds> timeout) {
  const uint64_t id = ++next_id_;
  const auto frame = wire::encode_frame(wire::Sync{id});
  for (int r : ranks) post_now(r, frame);
  std::unique_lock<std::mutex> lk(mu_);
  auto done = [&] {
    for (int r : ranks) {
      if (workers_[static_cast<size_t>(r)]->synced < id) return false;
    }
    return true;
  };
  if (!wait_for(lk, timeout, ranks, done)) {
    std::vector<int> behind;
    for (int r : ranks) {
      if (workers_[static_cast<size_t>(r)]->synced < id) behind.push_back(r);
    }
    throw Timeout(fmt::format("sync: worker{} [{}] did not finish within {} ms", behind.size() == 1 ? "" : "s",
                              fmt::join(behind, ", "), timeout->count()));
  }
  rethrow_first_error(lk);
}

wire::Reply Controller::Impl::wait_reply(int rank, uint64_t request, std::optional<milliseconds> timeout) {
  worker(rank);
  std::unique_lock<std::mutex> lk(mu_);
  if (!wait_for(lk, timeout, {rank}, [&] { return replies_.count(request) != 0; })) {
    throw Timeout(fmt::format("worker {} did not answer request {} within {} ms", rank, request, timeout->count()));
  }
  auto it = replies_.find(request);
  wire::Reply r = std::move(it->second);
  replies_.erase(it);
  return r;
}

std::chrono::nanoseconds Controller::Impl::ping(int rank, std::optional<milliseconds> timeout) {
  Worker& w = worker(rank);
  if (w.lost_flag.load(std::memory_order_relaxed)) throw_lost(rank);
  const uint64_t id = ++next_id_;
  wire::Echo echo;
  echo.id = id;
  const auto frame = wire::encode_frame(echo);
  const auto t0 = Clock::now();
  w.channel->send_now(frame);
  std::unique_lock<std::mutex> lk(mu_);
  if (!wait_for(lk, timeout, {rank}, [&] { return w.echoed >= id; })) {
    throw Timeout(fmt::format("ping: worker {} did not answer within {} ms", rank, timeout->count()));
  }
  const auto dt = Clock::now() - t0;
  rethrow_first_error(lk);
  return dt;
}

int64_t Controller::Impl::worker_pid(int rank) const { return worker(rank).pid; }

std::string Controller::Impl::device(int rank) const {
  const Worker& w = worker(rank);
  std::lock_guard<std::mutex> lk(mu_);
  return w.device;
}

std::vector<int> Controller::Impl::lost_workers() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<int> out;
  for (auto& w : workers_) {
    if (w->lost) out.push_back(w->rank);
  }
  return out;
}

AttachInfo Controller::Impl::attach_info() const {
  AttachInfo info;
  info.host = mode_ == Mode::kAttach ? opts_.listen_host : endpoint_;
  info.port = port_;
  info.token = mode_ == Mode::kAttach ? token_ : std::string();
  return info;
}

std::vector<std::string> Controller::Impl::rejected_connections() const {
  std::lock_guard<std::mutex> lk(mu_);
  return rejected_;
}

}  // namespace cox
