// Local workers: the device of each, spawning them, their output pipes and
// their exit. I/O thread (plan_devices: the user's thread, at construction).
#include "controller/controller_impl.hpp"

#include "common/check.hpp"
#include "controller/launcher.hpp"
#include "transport/auth.hpp"

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

namespace cox {

using std::chrono::milliseconds;

namespace {
// A line longer than this (a progress bar redrawn with \r, a dump without
// newlines) is passed on in pieces of this size, so that a worker's output
// never makes the controller's memory grow.
constexpr size_t kMaxLine = 16 * 1024;
}  // namespace

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
    for (; nl - start > kMaxLine; start += kMaxLine) emit(std::string_view(partial).substr(start, kMaxLine));
    emit(std::string_view(partial).substr(start, nl - start));
  }
  for (; partial.size() - start > kMaxLine; start += kMaxLine) emit(std::string_view(partial).substr(start, kMaxLine));
  partial.erase(0, start);
  if (eof && !partial.empty()) {
    emit(partial);
    partial.clear();
  }
}


}  // namespace cox
