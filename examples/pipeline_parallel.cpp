// Pipeline-parallel training on a local {pp, dp} mesh: the MLP's layers in
// stages along "pp", micro-batches in a GPipe schedule, activations and
// gradients moved between stages with to_mesh (examples/pipeline_parallel.hpp).
// Exits 0 when the loss reaches the target, 1 otherwise.
//
//   pipeline_parallel [--stages S] [--dp D] [--micro-batches M] [--steps N] [--batch B]
//                     [--hidden H] [--layers L] [--lr LR] [--target LOSS] [--log-every K]
#include "pipeline_parallel.hpp"

#include <cox/controller.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  cox::examples::TrainingConfig c;
  c.layers = 4;
  int64_t stages = 2, dp = 2, log_every = 25;
  double target = 0.6;
  for (int i = 1; i < argc; ++i) {
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    const std::string a = v ? argv[i++] : "";
    if (a == "--stages") stages = std::atoll(v);
    else if (a == "--dp") dp = std::atoll(v);
    else if (a == "--micro-batches") c.micro_batches = std::atoll(v);
    else if (a == "--steps") c.steps = std::atoll(v);
    else if (a == "--batch") c.batch = std::atoll(v);
    else if (a == "--hidden") c.hidden = std::atoll(v);
    else if (a == "--layers") c.layers = std::atoll(v);
    else if (a == "--lr") c.lr = std::atof(v);
    else if (a == "--target") target = std::atof(v);
    else if (a == "--log-every") log_every = std::atoll(v);
    else {
      std::fprintf(stderr,
                   "usage: pipeline_parallel [--stages S] [--dp D] [--micro-batches M] [--steps N] [--batch B]\n"
                   "                         [--hidden H] [--layers L] [--lr LR] [--target LOSS] [--log-every K]\n");
      return 2;
    }
  }
  if (stages < 1 || dp < 1 || c.steps < 1 || log_every < 1) {
    std::fprintf(stderr, "pipeline_parallel: --stages, --dp, --steps and --log-every must be positive\n");
    return 2;
  }
  try {
    using Clock = std::chrono::steady_clock;
    cox::Controller ctl = cox::Controller::local({.workers = static_cast<int>(stages * dp)});
    cox::DeviceMesh mesh = ctl.mesh({{"pp", stages}, {"dp", dp}});
    cox::examples::PipelineTrainer trainer(mesh, c);
    std::printf("pipeline parallel: mesh %s, %lld layers in %lld stages, %lld micro-batches of %lld per replica, "
                "%lld steps\n",
                mesh.shape().to_string().c_str(), (long long)c.layers, (long long)stages, (long long)c.micro_batches,
                (long long)(c.batch / c.micro_batches), (long long)c.steps);
    const auto t0 = Clock::now();
    auto last_log = t0;
    int64_t last_step = 0;
    double first = -1, smoothed = -1;
    for (int64_t step = 0; step < c.steps; ++step) {
      std::vector<std::pair<cox::Tensor, cox::Tensor>> batches;
      for (int64_t m = 0; m < c.micro_batches; ++m) batches.push_back(trainer.micro_batch(step, m));
      std::vector<cox::Tensor> losses = trainer.step(step, batches);
      if (step % log_every == 0 || step + 1 == c.steps) {
        double l = 0;
        for (auto& x : losses) l += cox::all_reduce(x.detach(), {"dp"}, cox::Reduce::Avg).item<float>();
        l /= static_cast<double>(losses.size());
        const auto now = Clock::now();
        const double rate = step == 0 ? 0
                                      : double(step - last_step) * double(c.batch * dp) /
                                            std::chrono::duration<double>(now - last_log).count();
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
                (long long)c.steps, secs, double(c.steps * c.batch * dp) / secs, first, smoothed, target);
    if (!(smoothed <= target)) {
      std::fprintf(stderr, "pipeline_parallel: the loss did not reach the target %.2f (last %.4f)\n", target, smoothed);
      return 1;
    }
    return 0;
  } catch (const cox::Error& e) {
    std::fprintf(stderr, "pipeline_parallel: %s\n", e.what());
    return 1;
  }
}
