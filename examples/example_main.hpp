// The command line and the training loop the training examples share:
// flags, a line per logged step (loss, learning rate, samples/s), a summary,
// and the exit status (0 when the loss reaches the target).
#pragma once

#include "training.hpp"

#include <cox/errors.hpp>

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace cox::examples {

// Whether local workers would run on GPUs by default (a CUDA libtorch, a
// visible GPU, and $COX_DEVICE not "cpu").
inline bool gpus_visible() {
  const char* env = std::getenv("COX_DEVICE");
  if (env && std::string(env) == "cpu") return false;
  return at::hasCUDA() && at::detail::getCUDAHooks().getNumGPUs() > 0;
}

struct ExampleFlags {
  TrainingConfig config;
  double target = 0.6;
  int64_t log_every = 25;
};

// Parses the common flags and `extra` (name without "--", where to put the
// value); prints usage and returns false on anything else.
inline bool parse_flags(int argc, char** argv, const char* name, ExampleFlags& f,
                        const std::vector<std::pair<std::string, int64_t*>>& extra) {
  TrainingConfig& c = f.config;
  std::vector<std::pair<std::string, int64_t*>> ints = extra;
  ints.insert(ints.end(), {{"steps", &c.steps}, {"batch", &c.batch}, {"hidden", &c.hidden},
                           {"layers", &c.layers}, {"micro-batches", &c.micro_batches}, {"log-every", &f.log_every}});
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    bool known = false;
    if (i + 1 < argc && a.rfind("--", 0) == 0) {
      const std::string key = a.substr(2), v = argv[i + 1];
      if (key == "lr") c.lr = std::atof(v.c_str()), known = true;
      if (key == "target") f.target = std::atof(v.c_str()), known = true;
      for (auto& [k, p] : ints) {
        if (k == key) *p = std::atoll(v.c_str()), known = true;
      }
      if (known) ++i;
    }
    if (!known) {
      std::string usage = std::string("usage: ") + name;
      for (auto& [k, p] : ints) usage += " [--" + k + " N]";
      std::fprintf(stderr, "%s [--lr LR] [--target LOSS]\n", usage.c_str());
      return false;
    }
  }
  for (auto& [k, p] : ints) {
    // --workers 0: one per GPU (the default where there are GPUs).
    if (*p < (k == "workers" ? 0 : 1)) {
      std::fprintf(stderr, "%s: --%s must be positive%s\n", name, k.c_str(), k == "workers" ? " (or 0)" : "");
      return false;
    }
  }
  return true;
}

// Runs c.steps steps; step(s) returns the step's losses (each averaged over
// its mesh for the log, then over the list).
inline int run_training(const char* name, const ExampleFlags& f, int64_t samples_per_step,
                        const std::function<std::vector<Tensor>(int64_t)>& step) {
  using Clock = std::chrono::steady_clock;
  const TrainingConfig& c = f.config;
  const auto t0 = Clock::now();
  auto last_log = t0;
  int64_t last_step = 0;
  double first = -1, smoothed = -1;
  for (int64_t s = 0; s < c.steps; ++s) {
    std::vector<Tensor> losses = step(s);
    if (s % f.log_every != 0 && s + 1 != c.steps) continue;
    double l = 0;
    for (const Tensor& x : losses) l += all_reduce(x.detach(), {}, Reduce::Avg).item<float>();
    l /= static_cast<double>(losses.size());
    const auto now = Clock::now();
    const double rate =
        s == 0 ? 0 : double((s - last_step) * samples_per_step) / std::chrono::duration<double>(now - last_log).count();
    if (first < 0) first = l;
    smoothed = smoothed < 0 ? l : 0.5 * smoothed + 0.5 * l;
    std::printf("step %5lld  loss %.4f  lr %.2e  %8.0f samples/s\n", (long long)s, l, learning_rate(c, s), rate);
    std::fflush(stdout);
    last_log = now;
    last_step = s;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("done: %lld steps in %.1f s (%.0f samples/s); loss %.4f -> %.4f (target %.2f)\n", (long long)c.steps,
              secs, double(c.steps * samples_per_step) / secs, first, smoothed, f.target);
  if (!(smoothed <= f.target)) {
    std::fprintf(stderr, "%s: the loss did not reach the target %.2f (last %.4f)\n", name, f.target, smoothed);
    return 1;
  }
  return 0;
}

}  // namespace cox::examples
