// What the training examples share: the synthetic task, the MLP's layers,
// the learning-rate schedule, AdamW, and gradient averaging in buckets.
//
// The task is synthetic but learnable: inputs x ~ N(0, 1), labels the argmax
// of a fixed random teacher MLP smaller than the student. Workers make their
// own batches from seeds (per step, per rank), so no data moves.
#pragma once

#include <cox/bucket.hpp>
#include <cox/collectives.hpp>
#include <cox/optim.hpp>
#include <cox/tensor.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

namespace cox::examples {

struct TrainingConfig {
  int64_t inputs = 32;
  int64_t hidden = 256;
  int64_t classes = 10;
  int64_t layers = 3;          // linear layers (>= 2)
  int64_t batch = 64;          // per worker
  int64_t steps = 300;
  double lr = 5e-3;
  double weight_decay = 0.01;
  double warmup = 0.05;        // fraction of steps
  int64_t bucket_bytes = 4 << 20;  // gradients are averaged in buckets of about this size
  int64_t micro_batches = 4;  // pipeline parallel: micro-batches per step
  uint64_t seed = 1;
};

// A warm-up to `lr`, then cosine decay to lr / 10.
inline double learning_rate(const TrainingConfig& c, int64_t step) {
  const double warm = std::max(1.0, c.warmup * static_cast<double>(c.steps));
  if (step < warm) return c.lr * (step + 1) / warm;
  const double t = (step - warm) / std::max(1.0, c.steps - warm);
  return c.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * t)));
}

// AdamW over every parameter: one fused op per step (cox::fused_adamw_),
// where the same step from aten ops would be about ten per parameter.
struct AdamW {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::vector<Tensor> m, v;
  int64_t t = 0;

  void step(std::vector<Tensor>& params, const std::vector<Tensor>& grads, double lr, double weight_decay) {
    ++t;
    if (m.empty()) {
      for (const auto& p : params) {
        m.push_back(zeros(p.mesh(), p.sizes()));
        v.push_back(zeros(p.mesh(), p.sizes()));
      }
    }
    fused_adamw_(params, grads, m, v, {lr, beta1, beta2, eps, weight_decay}, t);
  }
};

// The teacher: the same on every worker of the mesh it is made on.
class Teacher {
 public:
  static constexpr int64_t kHidden = 16;  // smaller than the student: learnable
  Teacher(const DeviceMesh& mesh, const TrainingConfig& c) {
    mesh.manual_seed(c.seed);
    w1_ = randn(mesh, {c.inputs, kHidden}) * (1.0 / std::sqrt(double(c.inputs)));
    w2_ = randn(mesh, {kHidden, c.classes}) * (3.0 / std::sqrt(double(kHidden)));
  }
  // Each worker's batch for `step`: x and its labels.
  std::pair<Tensor, Tensor> batch(const DeviceMesh& mesh, const TrainingConfig& c, int64_t step,
                                  int64_t rows) const {
    mesh.manual_seed(c.seed * 1000003 + static_cast<uint64_t>(step) + 1, /*per_rank=*/true);
    Tensor x = randn(mesh, {rows, c.inputs});
    NoGradGuard no_grad(mesh);
    return {x, tanh(x.matmul(w1_)).matmul(w2_).argmax(1)};
  }

 private:
  Tensor w1_, w2_;
};

// Layer l of the student MLP (weight, bias), as the examples initialise it
// (draw order matters: the same seed gives the same model everywhere).
inline std::pair<int64_t, int64_t> layer_shape(const TrainingConfig& c, int64_t l) {
  const int64_t fan_in = l == 0 ? c.inputs : c.hidden;
  const int64_t fan_out = l + 1 == c.layers ? c.classes : c.hidden;
  return {fan_in, fan_out};
}
inline std::vector<Tensor> make_layers(const DeviceMesh& mesh, const TrainingConfig& c, int64_t begin, int64_t end) {
  std::vector<Tensor> params;
  for (int64_t l = begin; l < end; ++l) {
    mesh.manual_seed(c.seed * 7 + static_cast<uint64_t>(l) + 1);
    auto [fan_in, fan_out] = layer_shape(c, l);
    params.push_back((randn(mesh, {fan_in, fan_out}) * (1.0 / std::sqrt(double(fan_in)))).requires_grad_());
    params.push_back(zeros(mesh, {fan_out}).requires_grad_());
  }
  return params;
}
// Layers as (weight, bias) pairs; GELU between layers, none after the last
// layer of the whole model.
inline Tensor apply_layers(const std::vector<Tensor>& params, Tensor h, bool ends_model) {
  for (size_t l = 0; l < params.size(); l += 2) {
    h = h.matmul(params[l]) + params[l + 1];
    if (l + 2 < params.size() || !ends_model) h = gelu(h);
  }
  return h;
}

// The gradients of `params` averaged over `dims` of their mesh, in buckets
// of about bucket_bytes, last parameter first (the order backward produces
// them): each bucket is one flat buffer (cox::flatten: one op, one kernel)
// and one all_reduce in place, and the averaged gradients are views of it.
// The parameters' own gradients are zeroed.
inline std::vector<Tensor> average_gradients(const std::vector<Tensor>& params, const Dims& dims,
                                             int64_t bucket_bytes) {
  std::vector<Tensor> out(params.size());
  size_t end = params.size();
  while (end > 0) {
    size_t begin = end;
    int64_t bytes = 0;
    while (begin > 0 && (begin == end || bytes + params[begin - 1].numel() * 4 <= bucket_bytes)) {
      bytes += params[--begin].numel() * 4;
    }
    std::vector<Tensor> grads;
    for (size_t i = begin; i < end; ++i) grads.push_back(params[i].grad());
    Tensor bucket = flatten(grads);
    all_reduce_(bucket, dims, Reduce::Avg);
    int64_t at = 0;
    for (size_t i = begin; i < end; ++i) {
      out[i] = bucket.narrow(0, at, params[i].numel()).view(params[i].sizes());
      at += params[i].numel();
    }
    end = begin;
  }
  for (const auto& p : params) p.grad().zero_();
  return out;
}

}  // namespace cox::examples
