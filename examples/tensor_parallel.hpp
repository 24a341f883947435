// 2-D parallel training on a {dp, tp} mesh, Megatron style: the MLP's middle
// block is split over "tp" (a column-parallel layer, then a row-parallel
// one whose partial sums are all_reduced over "tp"), the first layer and the
// head are replicated, and gradients are averaged over "dp".
//
// Collectives carry no autograd history, so the step runs backward through
// the graph in three pieces, doing at each boundary what Megatron's f and g
// operators do: g (all_reduce forward, identity backward) after the
// row-parallel layer, and f (identity forward, all_reduce backward) in
// front of the column-parallel one.
#pragma once

#include "training.hpp"

#include <cox/errors.hpp>

namespace cox::examples {

class TensorParallelTrainer {
 public:
  // Layers: 0 replicated, 1 column-parallel, 2 row-parallel, 3 the head.
  static constexpr int64_t kLayers = 4;

  TensorParallelTrainer(DeviceMesh mesh, TrainingConfig c) : mesh_(std::move(mesh)), c_(c), teacher_(mesh_, c_) {
    c_.layers = kLayers;
    const int64_t tp = mesh_.size("tp");
    if (c_.hidden % tp != 0) throw InvalidArgument("tensor parallel: hidden must divide by the tp size");
    // The full layers, the same on every worker, then each tp rank keeps its
    // columns of layer 1 and its rows of layer 2.
    std::vector<Tensor> full = make_layers(mesh_, c_, 0, kLayers);
    NoGradGuard no_grad(mesh_);
    const int64_t part = c_.hidden / tp;
    Tensor mine = arange(mesh_, part, {at::kLong}) +
                  call_op("aten::mul", "Scalar", {coordinate(mesh_, "tp"), part})[0];
    auto shard = [&](const Tensor& t, int64_t dim) { return t.index_select(dim, mine).detach().requires_grad_(); };
    params_ = {full[0], full[1], shard(full[2], 1), shard(full[3], 0), shard(full[4], 0), full[5], full[6], full[7]};
  }

  // Each dp replica's batch: made on tp rank 0 and broadcast over "tp", so
  // that the ranks of a tensor-parallel group see the same data.
  std::pair<Tensor, Tensor> batch(int64_t step) {
    auto [x, y] = teacher_.batch(mesh_, c_, step, c_.batch);
    return {broadcast(x, {"tp"}, 0), broadcast(y, {"tp"}, 0)};
  }

  Tensor step(int64_t step, const Tensor& x, const Tensor& y) {
    const auto& p = params_;
    // Replicated first layer.
    Tensor h0 = gelu(x.matmul(p[0]) + p[1]);
    // f: the tensor-parallel block starts from a leaf, whose gradient (a
    // partial sum per tp rank) is all_reduced on the way back.
    Tensor h0_in = h0.detach().requires_grad_();
    Tensor partial = gelu(h0_in.matmul(p[2]) + p[3]).matmul(p[4]);
    // g: the row-parallel layer's partial sums, all_reduced.
    Tensor summed = all_reduce(partial, {"tp"}).requires_grad_();
    Tensor loss = cross_entropy(gelu(summed + p[5]).matmul(p[6]) + p[7], y);
    loss.backward();
    partial.backward(summed.grad());
    h0.backward(all_reduce(h0_in.grad(), {"tp"}));
    std::vector<Tensor> grads = average_gradients(params_, {"dp"}, c_.bucket_bytes);
    NoGradGuard no_grad(mesh_);
    opt_.step(params_, grads, learning_rate(c_, step), c_.weight_decay);
    return loss;
  }

  // (weight, bias) per layer; layers 1 and 2 hold this tp rank's shard.
  std::vector<Tensor>& params() { return params_; }

 private:
  DeviceMesh mesh_;
  TrainingConfig c_;
  Teacher teacher_;
  std::vector<Tensor> params_;
  AdamW opt_;
};

}  // namespace cox::examples
