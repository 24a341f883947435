// 2-D parallel training on a local {dp, tp} mesh: a Megatron-style MLP block
// split over "tp" (column- then row-parallel, all_reduce over "tp" forward
// and backward), gradients averaged over "dp" (examples/tensor_parallel.hpp).
// Exits 0 when the loss reaches the target, 1 otherwise.
//
//   tensor_parallel [--dp D] [--tp T] [--steps N] [--batch B] [--hidden H]
//                   [--lr LR] [--target LOSS] [--log-every K]
#include "example_main.hpp"
#include "tensor_parallel.hpp"

#include <cox/controller.hpp>

int main(int argc, char** argv) {
  cox::examples::ExampleFlags f;
  int64_t dp = 2, tp = 2;
  if (!cox::examples::parse_flags(argc, argv, "tensor_parallel", f, {{"dp", &dp}, {"tp", &tp}})) return 2;
  const auto& c = f.config;
  try {
    cox::Controller ctl = cox::Controller::local({.workers = static_cast<int>(dp * tp)});
    cox::DeviceMesh mesh = ctl.mesh({{"dp", dp}, {"tp", tp}});
    cox::examples::TensorParallelTrainer trainer(mesh, c);
    std::printf("2-D parallel: mesh %s; MLP %lld-%lld-[%lld/%lld per tp rank]-%lld-%lld, batch %lld per replica, "
                "%lld steps\n",
                mesh.shape().to_string().c_str(), (long long)c.inputs, (long long)c.hidden, (long long)c.hidden,
                (long long)tp, (long long)c.hidden, (long long)c.classes, (long long)c.batch, (long long)c.steps);
    return cox::examples::run_training("tensor_parallel", f, c.batch * dp, [&](int64_t step) {
      auto [x, y] = trainer.batch(step);
      return std::vector<cox::Tensor>{trainer.step(step, x, y)};
    });
  } catch (const cox::Error& e) {
    std::fprintf(stderr, "tensor_parallel: %s\n", e.what());
    return 1;
  }
}
