// Data-parallel training on a local mesh: an MLP classifier learns a random
// teacher's labels, gradients averaged over "dp" (examples/data_parallel.hpp).
// Exits 0 when the loss reaches the target, 1 otherwise.
//
//   data_parallel [--workers N] [--steps S] [--batch B] [--hidden H] [--layers L]
//                 [--lr LR] [--target LOSS] [--log-every K]
#include "data_parallel.hpp"

#include <cox/controller.hpp>
#include <cox/errors.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: data_parallel [--workers N] [--steps S] [--batch B] [--hidden H] [--layers L] [--lr LR]\n"
               "                     [--target LOSS] [--log-every K]\n");
}

}  // namespace

int main(int argc, char** argv) {
  cox::examples::TrainingConfig c;
  int workers = 4;
  double target = 0.6;
  int64_t log_every = 25;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      usage();
      return 2;
    }
    const char* v = argv[++i];
    if (a == "--workers") workers = std::atoi(v);
    else if (a == "--steps") c.steps = std::atoll(v);
    else if (a == "--batch") c.batch = std::atoll(v);
    else if (a == "--hidden") c.hidden = std::atoll(v);
    else if (a == "--layers") c.layers = std::atoll(v);
    else if (a == "--lr") c.lr = std::atof(v);
    else if (a == "--target") target = std::atof(v);
    else if (a == "--log-every") log_every = std::atoll(v);
    else {
      usage();
      return 2;
    }
  }
  if (workers < 1 || c.steps < 1 || c.batch < 1 || c.hidden < 1 || c.layers < 2 || log_every < 1) {
    std::fprintf(stderr, "data_parallel: --workers, --steps, --batch, --hidden and --log-every must be positive, "
                         "--layers at least 2\n");
    return 2;
  }
  try {
    using Clock = std::chrono::steady_clock;
    cox::Controller ctl = cox::Controller::local({.workers = workers});
    cox::DeviceMesh mesh = ctl.mesh({{"dp", workers}});
    std::printf("data parallel: %d CPU workers, mesh %s; MLP %lld-%lldx%lld-%lld, batch %lld per worker, %lld steps\n",
                workers, mesh.shape().to_string().c_str(), (long long)c.inputs, (long long)c.hidden,
                (long long)(c.layers - 1), (long long)c.classes, (long long)c.batch, (long long)c.steps);
    cox::examples::DataParallelTrainer trainer(mesh, c);
    const auto t0 = Clock::now();
    auto last_log = t0;
    int64_t last_step = 0;
    double first = -1, smoothed = -1;
    for (int64_t step = 0; step < c.steps; ++step) {
      auto [x, y] = trainer.batch(step);
      cox::Tensor loss = trainer.step(step, x, y);
      if (step % log_every == 0 || step + 1 == c.steps) {
        // The global batch's loss: the workers' losses averaged over dp.
        const double l = cox::all_reduce(loss.detach(), {"dp"}, cox::Reduce::Avg).item<float>();
        const auto now = Clock::now();
        const double secs = std::chrono::duration<double>(now - last_log).count();
        const double rate = step == 0 ? 0 : double(step - last_step) * c.batch * workers / secs;
        if (first < 0) first = l;
        smoothed = smoothed < 0 ? l : 0.5 * smoothed + 0.5 * l;
        std::printf("step %5lld  loss %.4f  lr %.2e  %8.0f samples/s\n", (long long)step, l,
                    cox::examples::learning_rate(c, step), rate);
        std::fflush(stdout);
        last_log = now;
        last_step = step;
      }
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("done: %lld steps in %.1f s (%.0f samples/s); loss %.4f -> %.4f (target %.2f)\n",
                (long long)c.steps, secs, double(c.steps * c.batch * workers) / secs, first, smoothed, target);
    if (!(smoothed <= target)) {
      std::fprintf(stderr, "data_parallel: the loss did not reach the target %.2f (last %.4f)\n", target, smoothed);
      return 1;
    }
    return 0;
  } catch (const cox::Error& e) {
    std::fprintf(stderr, "data_parallel: %s\n", e.what());
    return 1;
  }
}
