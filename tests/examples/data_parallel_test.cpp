// The data-parallel example against one process of plain libtorch: the same
// initial parameters, the same data (every worker's batch, concatenated into
// the global batch), the same AdamW written out here. Over 20 steps the
// losses and the final parameters must match, and every worker must hold the
// same parameters.
#include "data_parallel.hpp"
#include "examples/reference.hpp"

#include <cox/controller.hpp>

#include <catch2/catch.hpp>


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
  std::vector<at::Tensor> initial;
  for (auto& p : trainer.params()) initial.push_back(p.detach().fetch({{"dp", 0}}).get());
  test::ReferenceModel ref(initial);

  for (int64_t step = 0; step < c.steps; ++step) {
    auto [x, y] = trainer.batch(step);
    const at::Tensor gx = at::cat(x.fetch_all(30000ms)), gy = at::cat(y.fetch_all(30000ms));
    REQUIRE(gx.size(0) == 32);
    Tensor loss = trainer.step(step, x, y);

    const double local = ref.step(gx, gy, examples::learning_rate(c, step), c.weight_decay);
    // The global batch's loss is the mean of the workers' (equal batches).
    double remote = 0;
    for (const at::Tensor& l : loss.detach().fetch_all(30000ms)) remote += l.item<double>() / 4;
    INFO("step " << step);
    REQUIRE(remote == Approx(local).epsilon(1e-4));
  }
  for (size_t i = 0; i < ref.params.size(); ++i) {
    const auto shards = trainer.params()[i].detach().fetch_all(30000ms);
    INFO("parameter " << i);
    for (const at::Tensor& s : shards) {
      REQUIRE(at::equal(s, shards[0]));  // every worker holds the same parameters
      REQUIRE(at::allclose(s, ref.params[i].detach(), 1e-4, 1e-5));
    }
  }
}
