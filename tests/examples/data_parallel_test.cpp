// The data-parallel example against one process of plain libtorch: the same
// initial parameters, the same data (every worker's batch, concatenated into
// the global batch), the same AdamW written out here. Over 20 steps the
// losses and the final parameters must match, and every worker must hold the
// same parameters.
#include "data_parallel.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cox/controller.hpp>

#include <catch2/catch.hpp>

#include <cmath>

using namespace cox;
using namespace std::chrono_literals;

TEST_CASE("data parallel over 4 workers equals one process with the global batch", "[examples][dp]") {
  ControllerOptions o;
  o.workers = 4;
  o.worker_path = COX_TEST_WORKER;
  Controller ctl = Controller::local(o);
  DeviceMesh mesh = ctl.mesh({{"dp", 4}});

  examples::TrainingConfig c;
  c.inputs = 12;
  c.hidden = 24;
  c.classes = 5;
  c.layers = 3;
  c.batch = 8;
  c.steps = 20;
  c.lr = 1e-2;
  c.bucket_bytes = 1024;  // several buckets
  examples::DataParallelTrainer trainer(mesh, c);

  // The reference: the same initial parameters, in one process.
  std::vector<at::Tensor> params;
  for (auto& p : trainer.params()) params.push_back(p.detach().fetch({{"dp", 0}}).get().requires_grad_());
  std::vector<at::Tensor> m, v;
  for (auto& p : params) {
    m.push_back(at::zeros_like(p));
    v.push_back(at::zeros_like(p));
  }
  auto forward = [&](const at::Tensor& x) {
    at::Tensor h = x;
    for (size_t l = 0; l < params.size(); l += 2) {
      h = h.matmul(params[l]) + params[l + 1];
      if (l + 2 < params.size()) h = at::gelu(h);
    }
    return h;
  };

  for (int64_t step = 0; step < c.steps; ++step) {
    auto [x, y] = trainer.batch(step);
    const at::Tensor gx = at::cat(x.fetch_all(30000ms)), gy = at::cat(y.fetch_all(30000ms));
    REQUIRE(gx.size(0) == 32);
    Tensor loss = trainer.step(step, x, y);

    at::Tensor local_loss = at::cross_entropy_loss(forward(gx), gy);
    torch::autograd::backward({local_loss});
    {
      c10::NoGradGuard no_grad;
      const double lr = examples::learning_rate(c, step), b1 = 0.9, b2 = 0.999, eps = 1e-8;
      const double t = static_cast<double>(step + 1);
      for (size_t i = 0; i < params.size(); ++i) {
        at::Tensor g = params[i].grad();
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        const at::Tensor m_hat = m[i] / (1 - std::pow(b1, t)), v_hat = v[i] / (1 - std::pow(b2, t));
        params[i].mul_(1 - lr * c.weight_decay);
        params[i].sub_(lr * m_hat / (v_hat.sqrt() + eps));
        params[i].grad().zero_();
      }
    }
    // The global batch's loss is the mean of the workers' (equal batches).
    double remote = 0;
    for (const at::Tensor& l : loss.detach().fetch_all(30000ms)) remote += l.item<double>() / 4;
    INFO("step " << step);
    REQUIRE(remote == Approx(local_loss.item<double>()).epsilon(1e-4));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const auto shards = trainer.params()[i].detach().fetch_all(30000ms);
    INFO("parameter " << i);
    for (const at::Tensor& s : shards) {
      REQUIRE(at::equal(s, shards[0]));  // every worker holds the same parameters
      REQUIRE(at::allclose(s, params[i].detach(), 1e-4, 1e-5));
    }
  }
}
