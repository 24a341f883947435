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

#include <algorithm>
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
  const transport::SessionKeys* keys = s.keys ? &*s.keys : nullptr;
  auto channel = std::make_shared<transport::Channel>(std::move(socket), s.welcome.max_frame, &write_side, keys);
  StreamReader reader(s.fd, s.welcome.max_frame, keys);
  Outbox outbox(*channel, hb_timeout);

  // On the I/O thread, so that a long operation on the executor changes
  // none of it: heartbeats out (saying what the executor is doing), the
  // controller watched (silence past heartbeat_timeout ends this worker,
  // in a collective or not), and notices of lost peers acted on while the
  // executor is busy.
  std::atomic<Executor*> exec_ptr{nullptr};
  asio::steady_timer watch(io);
  const milliseconds tick = std::min(hb_interval, milliseconds(100));
  auto next_beat = Clock::now();
  uint64_t seen_started = 0;
  uint64_t tick_started = 0;
  auto busy_since = Clock::now();
  std::function<void()> on_tick = [&] {
    watch.expires_after(tick);
    watch.async_wait([&](const std::error_code& ec) {
      if (ec) return;
      pollfd p{s.fd, POLLRDHUP, 0};
      if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) && !write_side.stopping.load()) {
        die(o.rank, "lost the controller: connection closed");
      }
      Executor* exec = exec_ptr.load(std::memory_order_acquire);
      // Drained only while the executor has been on one message since the
      // last tick: one that streams through messages reads them itself
      // (and its heartbeats), at no cost of an extra copy.
      bool stuck = false;
      if (exec) {
        const uint64_t started = exec->progress().started.load(std::memory_order_acquire);
        stuck = started > exec->progress().finished.load(std::memory_order_acquire) && started == tick_started;
        tick_started = started;
      }
      if (stuck) {
        try {
          reader.drain(wire::MsgType::kPeerLost, [&](const wire::FrameView& f) {
            try {
              exec->peer_lost(wire::decode<wire::PeerLost>(f));
            } catch (const ProtocolError&) {
              // A malformed notice is the executor's to refuse, in order.
            }
          });
        } catch (const ProtocolError& e) {
          die(o.rank, std::string("protocol error in the controller's stream: ") + e.what());
        }
      }
      const auto now = Clock::now();
      const auto silent = std::chrono::duration_cast<milliseconds>(now - reader.last_receive());
      if (silent > hb_timeout && !reader.behind() && !write_side.stopping.load()) {
        die(o.rank, fmt::format("no message from the controller for {} ms (heartbeat_timeout {} ms)", silent.count(),
                                hb_timeout.count()));
      }
      if (now >= next_beat) {
        next_beat = now + hb_interval;
        wire::Heartbeat hb;
        if (exec) {
          const auto& pr = exec->progress();
          hb.started = pr.started.load(std::memory_order_acquire);
          hb.busy = hb.started > pr.finished.load(std::memory_order_acquire);
          if (hb.busy) {
            if (hb.started != seen_started) {
              seen_started = hb.started;
              busy_since = now;  // started since the last look
            }
            hb.busy_ms = static_cast<uint32_t>(
                std::min<int64_t>(std::chrono::duration_cast<milliseconds>(now - busy_since).count(), UINT32_MAX));
            hb.doing = exec->describe(static_cast<wire::MsgType>(pr.type.load(std::memory_order_relaxed)),
                                      pr.detail.load(std::memory_order_relaxed));
          }
        }
        // On the control lane: ahead of any reply being streamed.
        channel->send_control(wire::encode_frame(hb));
      } else if (exec) {
        // Between heartbeats, note when the running message started.
        const auto& pr = exec->progress();
        const uint64_t started = pr.started.load(std::memory_order_acquire);
        if (started != seen_started && started > pr.finished.load(std::memory_order_acquire)) {
          seen_started = started;
          busy_since = now;
        }
      }
      on_tick();
    });
  };
  on_tick();
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
    const int control_fd = s.fd;
    hooks.gloo_hostname = [control_fd](const std::vector<std::string>& hosts) { return gloo_hostname(control_fd, hosts); };
    exec_holder.emplace(o.rank, device, outbox, reader, std::move(hooks));
  } catch (const std::exception& e) {
    die(o.rank, std::string("cannot use device ") + device.str() + ": " + e.what());
  }
  Executor& exec = *exec_holder;
  exec_ptr.store(&exec, std::memory_order_release);
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
    watch.cancel();
    channel->close("worker shut down");
    io.stop();
  });
  io_thread.join();
  return 0;
}

}  // namespace cox::worker
