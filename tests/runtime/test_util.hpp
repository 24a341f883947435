// Helpers for tests that run real worker processes.
#pragma once

#include <cox/controller.hpp>

#include "controller/controller_impl.hpp"
#include "wire/messages.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace cox::test {

using namespace std::chrono_literals;

inline std::string worker_binary() { return COX_TEST_WORKER; }

// True while `pid` names a process that has not been reaped.
inline bool process_exists(int64_t pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH); }

// Polls `pred` until true or `timeout`; returns its last value.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

// An OutputSink that keeps every line.
struct CapturedOutput {
  std::mutex mu;
  std::vector<std::tuple<int, OutputStream, std::string>> lines;

  OutputSink sink() {
    return [this](int rank, OutputStream s, std::string_view line) {
      std::lock_guard<std::mutex> lk(mu);
      lines.emplace_back(rank, s, std::string(line));
    };
  }
  bool has(int rank, OutputStream s, const std::string& text) {
    std::lock_guard<std::mutex> lk(mu);
    for (auto& [r, st, l] : lines) {
      if (r == rank && st == s && l == text) return true;
    }
    return false;
  }
};

inline ControllerOptions local_options(int workers) {
  ControllerOptions o;
  o.workers = workers;
  o.worker_path = worker_binary();
  o.startup_timeout = 20000ms;
  return o;
}

template <class M>
void post(Controller& ctl, int rank, const M& m) {
  ctl.impl().post(rank, wire::encode_frame(m));
}

}  // namespace cox::test
