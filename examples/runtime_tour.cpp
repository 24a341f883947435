// A tour of the runtime: a controller starts local workers, lays a named mesh
// over them, and drives them in step; then one worker is killed, and the
// controller says which, how, and with its last words.
//
//   runtime_tour [--workers N]
#include <cox/controller.hpp>
#include <cox/errors.hpp>
#include <cox/shape.hpp>

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  int workers = 4;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--workers" && i + 1 < argc) {
      workers = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: runtime_tour [--workers N]\n");
      return 2;
    }
  }
  try {
    const auto t0 = std::chrono::steady_clock::now();
    cox::Controller ctl = cox::Controller::local({.workers = workers});
    const double start_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("started %d workers in %.0f ms\n", ctl.size(), start_ms);

    // Two replicas when the count allows it, each spanning the rest.
    const int64_t dp = workers % 2 == 0 ? 2 : 1;
    cox::Shape mesh({{"dp", dp}, {"tp", workers / dp}});
    std::printf("mesh %s\n", mesh.to_string().c_str());
    for (int64_t r : mesh.ranks()) {
      auto c = mesh.coord_of(r);
      const double us = std::chrono::duration<double, std::micro>(ctl.ping(static_cast<int>(r))).count();
      std::printf("  rank %lld at dp=%lld tp=%lld: pid %lld, round trip %.1f us\n", static_cast<long long>(r),
                  static_cast<long long>(c[0]), static_cast<long long>(c[1]),
                  static_cast<long long>(ctl.worker_pid(static_cast<int>(r))), us);
    }
    ctl.sync();
    std::printf("all workers in step\n");

    const int victim = workers - 1;
    std::printf("killing worker %d ...\n", victim);
    ::kill(static_cast<pid_t>(ctl.worker_pid(victim)), SIGKILL);
    try {
      ctl.sync(std::chrono::seconds(10));
    } catch (const cox::WorkerLost& e) {
      std::printf("the controller noticed: %s\n", e.what());
    }
    ctl.shutdown();
    std::printf("shut down cleanly; no worker left behind\n");
    return 0;
  } catch (const cox::Error& e) {
    std::fprintf(stderr, "runtime_tour: %s\n", e.what());
    return 1;
  }
}
