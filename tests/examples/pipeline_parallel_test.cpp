// The pipeline-parallel example against one process of plain libtorch: two
// stages of two layers, two dp replicas, two micro-batches per step. Over 20
// steps the losses and the final parameters must match.
#include "examples/reference.hpp"
#include "pipeline_parallel.hpp"

#include <cox/controller.hpp>

#include <catch2/catch.hpp>

using namespace cox;
using namespace std::chrono_literals;

TEST_CASE("pipeline parallel over {pp=2, dp=2} equals one process", "[examples][pp]") {
  ControllerOptions o;
  o.workers = 4;
  o.worker_path = COX_TEST_WORKER;
  Controller ctl = Controller::local(o);
  DeviceMesh mesh = ctl.mesh({{"pp", 2}, {"dp", 2}});

  examples::TrainingConfig c;
  c.inputs = 12;
  c.hidden = 24;
  c.classes = 5;
  c.layers = 4;
  c.batch = 8;
  c.micro_batches = 2;
  c.steps = 20;
  c.lr = 1e-2;
  c.bucket_bytes = 1024;
  examples::PipelineTrainer trainer(mesh, c);
  REQUIRE(trainer.stages() == 2);

  std::vector<at::Tensor> initial;
  for (auto& p : trainer.params()) initial.push_back(p.detach().fetch({{"dp", 0}}).get());
  test::ReferenceModel ref(initial);

  for (int64_t step = 0; step < c.steps; ++step) {
    std::vector<std::pair<Tensor, Tensor>> batches;
    std::vector<at::Tensor> xs, ys;
    for (int64_t m = 0; m < c.micro_batches; ++m) {
      batches.push_back(trainer.micro_batch(step, m));
      for (auto& x : batches.back().first.fetch_all(30000ms)) xs.push_back(x);
      for (auto& y : batches.back().second.fetch_all(30000ms)) ys.push_back(y);
    }
    std::vector<Tensor> losses = trainer.step(step, batches);
    const double local = ref.step(at::cat(xs), at::cat(ys), examples::learning_rate(c, step), c.weight_decay);
    double remote = 0;
    int n = 0;
    for (auto& l : losses) {
      REQUIRE(l.mesh() == trainer.stage_mesh(1));
      for (const at::Tensor& v : l.detach().fetch_all(30000ms)) {
        remote += v.item<double>();
        ++n;
      }
    }
    INFO("step " << step);
    REQUIRE(remote / n == Approx(local).epsilon(1e-4));
  }
  const auto params = trainer.params();
  for (size_t i = 0; i < params.size(); ++i) {
    const auto shards = params[i].detach().fetch_all(30000ms);
    INFO("parameter " << i);
    for (const at::Tensor& s : shards) {
      REQUIRE(at::equal(s, shards[0]));
      REQUIRE(at::allclose(s, ref.params[i].detach(), 1e-4, 1e-5));
    }
  }
}
