// The 2-D parallel example against one process of plain libtorch: a {dp=2,
// tp=2} mesh, the middle block split over tp. The sharded layers, put back
// together, must start as the reference model; over 20 steps the losses and
// the final parameters must match.
#include "examples/reference.hpp"
#include "tensor_parallel.hpp"

#include <cox/controller.hpp>

#include <catch2/catch.hpp>

using namespace cox;
using namespace std::chrono_literals;

namespace {

// Layer 1 is split by columns, layer 2 by rows: (param index, dim).
const std::vector<std::pair<size_t, int64_t>> kSharded{{2, 1}, {3, 0}, {4, 0}};

int64_t shard_dim(size_t i) {
  for (auto [p, d] : kSharded) {
    if (p == i) return d;
  }
  return -1;
}

// A parameter of replica `dp` as the unsharded model holds it.
at::Tensor whole(const Tensor& p, size_t i, int64_t dp) {
  const auto shards = p.detach().fetch_all(30000ms);  // row-major over (dp, tp)
  const int64_t d = shard_dim(i);
  if (d < 0) return shards[static_cast<size_t>(dp * 2)];
  return at::cat({shards[static_cast<size_t>(dp * 2)], shards[static_cast<size_t>(dp * 2 + 1)]}, d);
}

}  // namespace

TEST_CASE("2-D parallel over {dp=2, tp=2} equals the unsharded model in one process", "[examples][tp]") {
  ControllerOptions o;
  o.workers = 4;
  o.worker_path = COX_TEST_WORKER;
  Controller ctl = Controller::local(o);
  DeviceMesh mesh = ctl.mesh({{"dp", 2}, {"tp", 2}});

  examples::TrainingConfig c;
  c.inputs = 12;
  c.hidden = 24;
  c.classes = 5;
  c.batch = 8;
  c.steps = 20;
  c.lr = 1e-2;
  c.bucket_bytes = 1024;
  examples::TensorParallelTrainer trainer(mesh, c);
  REQUIRE(trainer.params()[2].sizes() == std::vector<int64_t>{24, 12});  // half the columns
  REQUIRE(trainer.params()[4].sizes() == std::vector<int64_t>{12, 24});  // half the rows

  std::vector<at::Tensor> initial;
  for (size_t i = 0; i < trainer.params().size(); ++i) initial.push_back(whole(trainer.params()[i], i, 0));
  test::ReferenceModel ref(initial);

  for (int64_t step = 0; step < c.steps; ++step) {
    auto [x, y] = trainer.batch(step);
    const auto xs = x.fetch_all(30000ms), ys = y.fetch_all(30000ms);
    REQUIRE(at::equal(xs[0], xs[1]));  // the ranks of a tp group see the same batch
    REQUIRE(at::equal(ys[2], ys[3]));
    Tensor loss = trainer.step(step, x, y);
    const double local = ref.step(at::cat({xs[0], xs[2]}), at::cat({ys[0], ys[2]}), examples::learning_rate(c, step),
                                  c.weight_decay);
    double remote = 0;
    for (const at::Tensor& l : loss.detach().fetch_all(30000ms)) remote += l.item<double>() / 4;
    INFO("step " << step);
    REQUIRE(remote == Approx(local).epsilon(1e-4));
  }
  for (size_t i = 0; i < trainer.params().size(); ++i) {
    INFO("parameter " << i);
    for (int64_t dp = 0; dp < 2; ++dp) REQUIRE(at::allclose(whole(trainer.params()[i], i, dp), ref.params[i].detach(), 1e-4, 1e-5));
  }
}
