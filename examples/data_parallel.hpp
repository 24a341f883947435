// Data-parallel training of an MLP classifier on a "dp" mesh, as one
// sequential program: the trainer of examples/data_parallel.cpp, shared with
// its test (tests/examples) and the SPMD-parity benchmark.
//
// Parameters start equal on every worker (same seeds); each step every
// worker computes the loss of its own batch, backward, gradients averaged
// over "dp" with one all_reduce per bucket, and an AdamW step with a
// warm-up then cosine learning-rate schedule.
#pragma once

#include "training.hpp"

namespace cox::examples {

class DataParallelTrainer {
 public:
  DataParallelTrainer(DeviceMesh mesh, TrainingConfig c)
      : mesh_(std::move(mesh)), c_(c), teacher_(mesh_, c_), params_(make_layers(mesh_, c_, 0, c_.layers)) {}

  // Each worker's batch for `step`.
  std::pair<Tensor, Tensor> batch(int64_t step) { return teacher_.batch(mesh_, c_, step, c_.batch); }

  Tensor forward(const Tensor& x) const { return apply_layers(params_, x, /*ends_model=*/true); }

  // One training step; returns this step's loss (each worker's own batch).
  Tensor step(int64_t step, const Tensor& x, const Tensor& y) {
    Tensor loss = cross_entropy(forward(x), y);
    loss.backward();
    std::vector<Tensor> grads = average_gradients(params_, {"dp"}, c_.bucket_bytes);
    NoGradGuard no_grad(mesh_);
    opt_.step(params_, grads, learning_rate(c_, step), c_.weight_decay);
    return loss;
  }

  std::vector<Tensor>& params() { return params_; }
  const TrainingConfig& config() const { return c_; }

 private:
  DeviceMesh mesh_;
  TrainingConfig c_;
  Teacher teacher_;
  std::vector<Tensor> params_;  // weight, bias per layer
  AdamW opt_;
};

}  // namespace cox::examples
