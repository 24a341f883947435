// The price of the single controller: one data-parallel training step of
// examples/data_parallel.hpp (MLP forward, cross-entropy, backward, bucketed
// gradient all_reduce over "dp", AdamW), driven by a Coxswain controller,
// beside a hand-written SPMD program of the same model and step: N processes,
// each its own loop of raw libtorch plus raw Gloo, no controller. Same sizes,
// same batch, same op sequence; the two take turns per model size.
//
// Prints the step time of both and their ratio (Coxswain / SPMD: lower is
// better; 1.0 is parity) for several hidden sizes, down to one small enough
// that per-op dispatch dominates.
#include "bench_util.hpp"
#include "spmd_group.hpp"

#include "data_parallel.hpp"
#include "kernels.hpp"

#include <cox/controller.hpp>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>

#include <cmath>
#include <sstream>

namespace {

using cox::bench::Clock;
using cox::bench::seconds_since;
using cox::examples::TrainingConfig;

struct Plan {
  int workers = 4;
  std::vector<int64_t> hidden{16, 128, 512, 1024};
  int steps = 10;  // per round; median of 3 rounds
};

TrainingConfig config(int64_t hidden) {
  TrainingConfig c;
  c.hidden = hidden;
  c.steps = 1000000;  // a long schedule: the rate stays warm-up-free after the first steps
  c.warmup = 0;
  return c;
}

// ---------------------------------------------------------------------------
// The hand-written SPMD rank: the same model and step in plain libtorch, the
// gradients averaged with Gloo's allreduce on the same buckets.

class SpmdTrainer {
 public:
  SpmdTrainer(const TrainingConfig& c, int rank, int n, std::shared_ptr<gloo::Context> ctx)
      : c_(c), rank_(rank), n_(n), ctx_(std::move(ctx)) {
    at::manual_seed(c.seed);
    teacher_.push_back(at::randn({c.inputs, 16}) / std::sqrt(double(c.inputs)));
    teacher_.push_back(at::randn({16, c.classes}) * (3.0 / 4.0));
    int64_t fan_in = c.inputs;
    for (int64_t l = 0; l < c.layers; ++l) {
      const int64_t fan_out = l + 1 == c.layers ? c.classes : c.hidden;
      params_.push_back((at::randn({fan_in, fan_out}) / std::sqrt(double(fan_in))).requires_grad_());
      params_.push_back(at::zeros({fan_out}).requires_grad_());
      fan_in = fan_out;
    }
    for (auto& p : params_) {
      m_.push_back(at::zeros_like(p));
      v_.push_back(at::zeros_like(p));
    }
  }

  void step(int64_t step) {
    at::manual_seed(c_.seed * 1000003 + static_cast<uint64_t>(step) + 1 + static_cast<uint64_t>(rank_) * 7919);
    const at::Tensor x = at::randn({c_.batch, c_.inputs});
    at::Tensor y;
    {
      c10::NoGradGuard no_grad;
      y = at::tanh(x.matmul(teacher_[0])).matmul(teacher_[1]).argmax(1);
    }
    at::Tensor h = x;
    for (size_t l = 0; l < params_.size(); l += 2) {
      h = h.matmul(params_[l]) + params_[l + 1];
      if (l + 2 < params_.size()) h = at::gelu(h);
    }
    torch::autograd::backward({at::cross_entropy_loss(h, y)});
    c10::NoGradGuard no_grad;
    // Buckets as the example makes them: last layer first.
    std::vector<at::Tensor> grads(params_.size());
    size_t end = params_.size();
    while (end > 0) {
      size_t begin = end;
      int64_t bytes = 0;
      while (begin > 0 && (begin == end || bytes + params_[begin - 1].numel() * 4 <= c_.bucket_bytes)) {
        bytes += params_[--begin].numel() * 4;
      }
      std::vector<at::Tensor> flat;
      for (size_t i = begin; i < end; ++i) flat.push_back(params_[i].grad().view({-1}));
      at::Tensor bucket = at::cat(flat);
      gloo::AllreduceOptions o(ctx_);
      o.setOutput(bucket.data_ptr<float>(), static_cast<size_t>(bucket.numel()));
      o.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      o.setTag(tag_++);
      gloo::allreduce(o);
      bucket.div_(n_);
      int64_t at = 0;
      for (size_t i = begin; i < end; ++i) {
        grads[i] = bucket.narrow(0, at, params_[i].numel()).view(params_[i].sizes());
        at += params_[i].numel();
      }
      end = begin;
    }
    for (auto& p : params_) p.grad().zero_();
    // The same fused AdamW as the example's (its CPU implementation).
    ++t_;
    std::vector<float*> p, m, v;
    std::vector<const float*> g;
    std::vector<int64_t> n;
    for (size_t i = 0; i < params_.size(); ++i) {
      p.push_back(params_[i].data_ptr<float>());
      g.push_back(grads[i].data_ptr<float>());
      m.push_back(m_[i].data_ptr<float>());
      v.push_back(v_[i].data_ptr<float>());
      n.push_back(params_[i].numel());
    }
    cox::kernels::TensorLists lists;
    lists.count = static_cast<int>(p.size());
    lists.params = p.data();
    lists.grads = g.data();
    lists.state1 = m.data();
    lists.state2 = v.data();
    lists.n = n.data();
    cox::kernels::adamw_f32_cpu(lists, {static_cast<float>(cox::examples::learning_rate(c_, step)), 0.9f, 0.999f,
                                        1e-8f, static_cast<float>(c_.weight_decay), t_});
  }

 private:
  TrainingConfig c_;
  int rank_, n_;
  std::shared_ptr<gloo::Context> ctx_;
  std::vector<at::Tensor> teacher_, params_, m_, v_;
  int64_t t_ = 0;
  uint32_t tag_ = 0;
};

int run_spmd_rank(const Plan& plan, int rank, const std::string& dir) {
  cox::bench::SpmdGroup::set_rank_threads();
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(dir);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, plan.workers);
  ctx->setTimeout(std::chrono::minutes(5));
  ctx->connectFullMesh(store, dev);
  uint32_t tag = 1u << 30;
  auto barrier = [&] {
    gloo::BarrierOptions o(ctx);
    o.setTag(tag++);
    gloo::barrier(o);
  };
  for (int64_t hidden : plan.hidden) {
    SpmdTrainer trainer(config(hidden), rank, plan.workers, ctx);
    if (rank == 0 && !cox::bench::SpmdGroup::wait_turn()) return 1;
    barrier();
    int64_t step = 0;
    for (int i = 0; i < 2; ++i) trainer.step(step++);
    std::vector<double> rounds;
    for (int r = 0; r < 3; ++r) {
      barrier();
      const auto t0 = Clock::now();
      for (int i = 0; i < plan.steps; ++i) trainer.step(step++);
      barrier();
      rounds.push_back(seconds_since(t0) / plan.steps);
    }
    if (rank == 0) cox::bench::SpmdGroup::report(cox::bench::stats(rounds).median);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Plan plan;
  cox::bench::Options common;
  int spmd_rank = -1;
  std::string spmd_dir;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--workers") {
      plan.workers = std::stoi(value());
    } else if (a == "--hidden") {
      plan.hidden.clear();
      std::stringstream ss(value());
      for (std::string h; std::getline(ss, h, ',');) plan.hidden.push_back(std::stoll(h));
    } else if (a == "--steps") {
      plan.steps = std::stoi(value());
    } else if (a == "--spmd-rank") {
      spmd_rank = std::stoi(value());
    } else if (a == "--spmd-dir") {
      spmd_dir = value();
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (spmd_rank >= 0) return run_spmd_rank(plan, spmd_rank, spmd_dir);
  if (!cox::bench::parse_options(static_cast<int>(rest.size()), rest.data(), "training_bench", common)) {
    std::fprintf(stderr, "       [--workers N] [--hidden H,H,...] [--steps K]\n");
    return 2;
  }
  if (common.quick) plan.steps = std::min(plan.steps, 5);
  if (common.tiny) {
    plan.workers = 2;
    plan.hidden = {16, 64};
    plan.steps = 2;
  }
  if (plan.workers < 2 || plan.steps < 1 || plan.hidden.empty()) {
    std::fprintf(stderr, "need --workers >= 2, --steps >= 1 and at least one --hidden size\n");
    return 2;
  }
  std::string sizes;
  for (int64_t h : plan.hidden) sizes += (sizes.empty() ? "" : ",") + std::to_string(h);

  cox::ControllerOptions o;
  o.workers = plan.workers;
  cox::Controller ctl = cox::Controller::local(o);
  cox::DeviceMesh mesh = ctl.mesh({{"dp", plan.workers}});
  cox::bench::SpmdGroup spmd(argv[0], plan.workers, [&](int r, const std::string& dir) {
    return std::vector<std::string>{"--spmd-rank", std::to_string(r), "--spmd-dir", dir, "--workers",
                                    std::to_string(plan.workers), "--hidden", sizes, "--steps",
                                    std::to_string(plan.steps)};
  });

  cox::bench::JsonRows rows;
  std::printf("data-parallel training step: %d CPU workers, MLP 32-Hx2-10, batch 64 per worker, AdamW\n",
              plan.workers);
  std::printf("%8s %10s %14s %14s %12s\n", "hidden", "params", "coxswain (ms)", "spmd (ms)", "time ratio");
  for (int64_t hidden : plan.hidden) {
    const double spmd_time = spmd.run_block();
    cox::examples::DataParallelTrainer trainer(mesh, config(hidden));
    int64_t step = 0;
    auto one = [&] {
      auto [x, y] = trainer.batch(step);
      trainer.step(step, x, y);
      ++step;
    };
    for (int i = 0; i < 2; ++i) one();
    mesh.sync();
    std::vector<double> rounds;
    for (int r = 0; r < 3; ++r) {
      const auto t0 = Clock::now();
      for (int i = 0; i < plan.steps; ++i) one();
      mesh.sync();
      rounds.push_back(seconds_since(t0) / plan.steps);
    }
    const double t = cox::bench::stats(rounds).median;
    int64_t params = 0;
    for (auto& p : trainer.params()) params += p.numel();
    std::printf("%8lld %10lld %14.2f %14.2f %12.2f\n", (long long)hidden, (long long)params, t * 1e3,
                spmd_time * 1e3, t / spmd_time);
    rows.add({{"bench", "training"}, {"case", "dp_step/hidden=" + std::to_string(hidden)}, {"unit", "ms"}},
             {{"value", t * 1e3}, {"baseline", spmd_time * 1e3}, {"ratio", t / spmd_time},
              {"params", double(params)}, {"workers", double(plan.workers)}});
  }
  std::printf("time ratio = Coxswain's step time / the SPMD program's (1.0 = parity, lower is better)\n");
  if (!common.json.empty() && !rows.write(common.json)) {
    std::fprintf(stderr, "cannot write %s\n", common.json.c_str());
    return 1;
  }
  return 0;
}
