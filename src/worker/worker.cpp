// The worker process: connect and handshake (connect.cpp), then an I/O
// thread (Asio) that writes to the controller (replies, heartbeats,
// forwarded output) and watches it, while the executor (this thread) reads
// the controller's stream and runs it in order (executor.cpp).
#include "worker/worker.hpp"

#include "worker/connect.hpp"
#include "worker/cpu_allocator.hpp"
#include "worker/executor.hpp"
#include "worker/gpu.hpp"
#include "worker/output_forwarder.hpp"

#include "common/check.hpp"
#include "ops/registry.hpp"
#include "transport/auth.hpp"
#include "transport/channel.hpp"
#include "wire/messages.hpp"

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <thread>

namespace cox::worker {

int diag_fd = 2;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

[[noreturn]] void die(int rank, const std::string& why) {
  std::fflush(stdout);
  std::fflush(stderr);
  const std::string line = fmt::format("cox-worker {}: {}\n", rank, why);
  (void)!::write(diag_fd, line.data(), line.size());
  std::_Exit(1);
}

// Write failures on the channel mean the controller is gone.
struct WriteSide final : transport::Channel::Handler {
  explicit WriteSide(int rank) : rank(rank) {}
  void on_frame(const wire::FrameView&) override {}
  void on_closed(const std::string& reason) override {
    if (!stopping.load()) die(rank, "lost the controller: " + reason);
  }
  const int rank;
  std::atomic<bool> stopping{false};
};

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
  Outbox outbox(*channel, hb_timeout);

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
      // On the control lane: ahead of any reply being streamed.
      channel->send_control(hb_frame);
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
    Tensors::Hooks hooks;
    hooks.gloo_hostname = gloo_hostname(s.fd);
    exec_holder.emplace(o.rank, device, outbox, reader, std::move(hooks));
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
