// Data-parallel training on a local mesh: an MLP classifier learns a random
// teacher's labels, gradients averaged over "dp" (examples/data_parallel.hpp).
// Exits 0 when the loss reaches the target, 1 otherwise.
//
//   data_parallel [--workers N] [--steps S] [--batch B] [--hidden H] [--layers L]
//                 [--lr LR] [--target LOSS] [--log-every K]
//
// Workers: one per visible GPU where this libtorch has CUDA, else 4 CPU
// workers; --workers N chooses (more workers than GPUs share them).
#include "data_parallel.hpp"
#include "example_main.hpp"

#include <cox/controller.hpp>

int main(int argc, char** argv) {
  cox::examples::ExampleFlags f;
  int64_t workers = 0;
  if (!cox::examples::parse_flags(argc, argv, "data_parallel", f, {{"workers", &workers}})) return 2;
  const auto& c = f.config;
  if (c.layers < 2) {
    std::fprintf(stderr, "data_parallel: --layers must be at least 2\n");
    return 2;
  }
  try {
    cox::ControllerOptions o;
    o.workers = static_cast<int>(workers);
    if (workers == 0 && !cox::examples::gpus_visible()) o.workers = 4;
    cox::Controller ctl = cox::Controller::local(o);
    workers = ctl.size();
    cox::DeviceMesh mesh = ctl.mesh({{"dp", workers}});
    std::printf("data parallel: %lld workers (%s%s), mesh %s; MLP %lld-%lldx%lld-%lld, batch %lld per worker, %lld steps\n",
                (long long)workers, ctl.device(0).c_str(), workers > 1 ? ", ..." : "", mesh.shape().to_string().c_str(),
                (long long)c.inputs, (long long)c.hidden,
                (long long)(c.layers - 1), (long long)c.classes, (long long)c.batch, (long long)c.steps);
    cox::examples::DataParallelTrainer trainer(mesh, c);
    return cox::examples::run_training("data_parallel", f, c.batch * workers, [&](int64_t step) {
      auto [x, y] = trainer.batch(step);
      return std::vector<cox::Tensor>{trainer.step(step, x, y)};
    });
  } catch (const cox::Error& e) {
    std::fprintf(stderr, "data_parallel: %s\n", e.what());
    return 1;
  }
}
