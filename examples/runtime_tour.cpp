// A tour of the runtime: a controller starts local workers, lays a named mesh
// over them, drives them in step, trains a small model on every worker (each
// on its own data), and then has one worker killed, and says which and how.
//
//   runtime_tour [--workers N]
#include <cox/controller.hpp>
#include <cox/errors.hpp>
#include <cox/shape.hpp>
#include <cox/tensor.hpp>

#include <ATen/ATen.h>

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

    // Every worker fits the same linear teacher from its own random samples:
    // one program, run in step on the whole mesh.
    cox::DeviceMesh dm = ctl.mesh({{"dp", dp}, {"tp", workers / dp}});
    at::manual_seed(0);
    cox::Tensor teacher = cox::from_local(dm, at::randn({16, 1}));
    dm.manual_seed(1, /*per_rank=*/true);
    cox::Tensor x = cox::randn(dm, {256, 16});
    cox::Tensor y = x.matmul(teacher);
    cox::Tensor w = cox::zeros(dm, {16, 1}, {.requires_grad = true});
    float first = 0, last = 0;
    for (int step = 0; step < 60; ++step) {
      cox::Tensor loss = cox::mse_loss(x.matmul(w), y);
      loss.backward();
      {
        cox::NoGradGuard no_grad(dm);
        w.sub_(w.grad(), 0.1);
        w.grad().zero_();
      }
      if (step % 20 == 0 || step == 59) {
        std::vector<at::Tensor> losses = loss.fetch_all();
        std::string line;
        for (auto& l : losses) line += " " + std::to_string(l.item<float>());
        std::printf("  step %2d loss per worker:%s\n", step, line.c_str());
        (step == 0 ? first : last) = losses[0].item<float>();
      }
    }
    if (!(last < 0.01f * first)) {
      std::fprintf(stderr, "runtime_tour: the loss did not fall (%g -> %g)\n", first, last);
      return 1;
    }
    std::printf("loss fell from %.4f to %.6f on every worker\n", first, last);

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
