// The controller's public API, its construction, start-up and shutdown.
//
// Runs on the user's thread; start-up hands the spawning of local workers
// to the I/O thread (see launch.cpp) and waits for every worker to connect.
#include "controller/controller_impl.hpp"
#include "controller/waiting.hpp"

#include "common/access.hpp"
#include "common/check.hpp"
#include "transport/auth.hpp"

#include <asio/post.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <future>

namespace cox {

using std::chrono::milliseconds;

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
std::vector<WorkerStatus> Controller::status() const { return impl_->status(); }

std::string to_string(const WorkerStatus& s) {
  auto secs = [](std::chrono::milliseconds d) { return fmt::format("{:.1f} s", static_cast<double>(d.count()) / 1000); };
  std::string out = fmt::format("worker {} [{}]", s.rank, s.device.empty() ? "?" : s.device);
  switch (s.state) {
    case WorkerStatus::State::kIdle: out += fmt::format(" idle after {} messages", s.started); break;
    case WorkerStatus::State::kBusy:
      out += fmt::format(" busy {} in {} (message {})", secs(s.busy_for), s.doing, s.started);
      break;
    case WorkerStatus::State::kLost: return out + " lost: " + s.lost;
    case WorkerStatus::State::kExited: return out + " exited";
  }
  out += fmt::format(", heard {} ago", secs(s.last_heard));
  if (s.pending_bytes) out += fmt::format(", {} bytes queued for it", s.pending_bytes);
  return out;
}
AttachInfo Controller::attach_info() const { return impl_->attach_info(); }

std::shared_ptr<runtime::Service> Controller::Impl::service(
    std::string_view key, const std::function<std::shared_ptr<runtime::Service>()>& make) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto& [k, s] : services_) {
    if (k == key) return s;
  }
  if (shut_down_) throw Error("the controller has shut down");
  return services_.emplace_back(std::string(key), make()).second;
}

runtime::Runtime& runtime::of(Controller& controller) {
  auto& impl = detail::Access::impl(controller);
  COX_CHECK_ARG(impl != nullptr, "use of a moved-from cox::Controller");
  return *impl;
}

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
  COX_CHECK_ARG(opts_.max_frame_bytes >= wire::kMinMaxFrame && opts_.max_frame_bytes <= 0xffffffffu,
                "max_frame_bytes must be in [{}, 2^32-1], got {}", wire::kMinMaxFrame, opts_.max_frame_bytes);
  COX_CHECK_ARG(opts_.send_timeout.count() > 0, "send_timeout must be positive, got {} ms", opts_.send_timeout.count());
  if (!opts_.output_sink) opts_.output_sink = default_output_sink();
  if (!opts_.token.empty()) {
    transport::check_token(opts_.token, "ControllerOptions::token");
    token_ = opts_.token;
  } else if (auto from_env = mode_ == Mode::kAttach ? transport::token_from_environment() : std::nullopt) {
    // An attaching controller shares its workers' token as they read it.
    token_ = std::move(*from_env);
  } else {
    token_ = transport::generate_token();
  }
  for (int r = 0; r < opts_.workers; ++r) {
    workers_.push_back(std::make_unique<Worker>(*this, r, io_));
    if (!devices.empty()) workers_.back()->spawn_device = devices[static_cast<size_t>(r)];
  }
  wire::encode_frame(wire::Heartbeat{}, heartbeat_frame_);
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
    const bool all = wait_for(lk, Clock::now() + opts_.startup_timeout, {}, [&] { return connected_ == size(); });
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
      start_heartbeats();
    });
  } catch (...) {
    shutdown();
    throw;
  }
}


void Controller::Impl::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    shutting_down_ = true;
  }
  cv_.notify_all();  // waiters on other threads end now
  decltype(services_) services;
  {
    std::lock_guard<std::mutex> lk(mu_);
    services.swap(services_);
  }
  for (auto& [key, s] : services) s->on_shutdown();
  if (io_thread_.joinable()) {
    // Ask every live worker to finish its stream and exit.
    std::vector<uint8_t> bye = wire::encode_frame(wire::Shutdown{});
    for (auto& w : workers_) {
      if (w->channel && !w->lost_flag.load()) w->channel->send(bye);
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

std::vector<WorkerStatus> Controller::Impl::status() const {
  const auto now = Clock::now();
  std::vector<WorkerStatus> out;
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& w : workers_) {
    WorkerStatus s;
    s.rank = w->rank;
    s.device = w->device;
    s.pid = w->pid;
    s.started = w->progress.started;
    if (w->channel) {
      s.pending_bytes = w->channel->pending();
      s.last_heard = std::chrono::duration_cast<std::chrono::milliseconds>(now - w->channel->last_receive());
    }
    if (w->lost) {
      s.state = WorkerStatus::State::kLost;
      try {
        std::rethrow_exception(w->lost);
      } catch (const std::exception& e) {
        s.lost = e.what();
      }
    } else if (w->exited) {
      s.state = WorkerStatus::State::kExited;
    } else if (w->progress.busy) {
      s.state = WorkerStatus::State::kBusy;
      s.doing = w->progress.doing;
      s.busy_for = std::chrono::milliseconds(w->progress.busy_ms);
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::string Controller::Impl::host(int rank) const {
  const Worker& w = worker(rank);
  std::lock_guard<std::mutex> lk(mu_);
  return w.host;
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
