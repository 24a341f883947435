// Pipeline-parallel training on a local {pp, dp} mesh: the MLP's layers in
// stages along "pp", micro-batches in a GPipe schedule, activations and
// gradients moved between stages with to_mesh (examples/pipeline_parallel.hpp).
// Exits 0 when the loss reaches the target, 1 otherwise.
//
//   pipeline_parallel [--stages S] [--dp D] [--micro-batches M] [--steps N] [--batch B]
//                     [--hidden H] [--layers L] [--lr LR] [--target LOSS] [--log-every K]
#include "example_main.hpp"
#include "pipeline_parallel.hpp"

#include <cox/controller.hpp>

int main(int argc, char** argv) {
  cox::examples::ExampleFlags f;
  f.config.layers = 4;
  int64_t stages = 2, dp = 2;
  if (!cox::examples::parse_flags(argc, argv, "pipeline_parallel", f, {{"stages", &stages}, {"dp", &dp}})) return 2;
  const auto& c = f.config;
  try {
    cox::Controller ctl = cox::Controller::local({.workers = static_cast<int>(stages * dp)});
    cox::DeviceMesh mesh = ctl.mesh({{"pp", stages}, {"dp", dp}});
    cox::examples::PipelineTrainer trainer(mesh, c);
    std::printf("pipeline parallel: mesh %s, %lld layers in %lld stages, %lld micro-batches of %lld per replica, "
                "%lld steps\n",
                mesh.shape().to_string().c_str(), (long long)c.layers, (long long)stages, (long long)c.micro_batches,
                (long long)(c.batch / c.micro_batches), (long long)c.steps);
    return cox::examples::run_training("pipeline_parallel", f, c.batch * dp, [&](int64_t step) {
      std::vector<std::pair<cox::Tensor, cox::Tensor>> batches;
      for (int64_t m = 0; m < c.micro_batches; ++m) batches.push_back(trainer.micro_batch(step, m));
      return trainer.step(step, batches);
    });
  } catch (const cox::Error& e) {
    std::fprintf(stderr, "pipeline_parallel: %s\n", e.what());
    return 1;
  }
}
