// Data-parallel training of an MLP classifier on a "dp" mesh, as one
// sequential program: the pieces of examples/data_parallel.cpp, shared with
// its test (tests/examples) and the SPMD-parity benchmark.
//
// The task is synthetic but learnable: inputs x ~ N(0, 1), labels the argmax
// of a fixed random teacher MLP. Every worker makes its own batch from a seed
// (per step, per rank), so no data moves. Parameters start equal on every
// worker (same seed); each step every worker computes the loss of its batch,
// backward, gradients averaged over "dp" with one all_reduce per bucket, and
// an AdamW step; a warm-up then cosine learning-rate schedule.
#pragma once

#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

namespace cox::examples {

struct DataParallelConfig {
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
  uint64_t seed = 1;
};

// A warm-up to `lr`, then cosine decay to lr / 10.
inline double learning_rate(const DataParallelConfig& c, int64_t step) {
  const double warm = std::max(1.0, c.warmup * static_cast<double>(c.steps));
  if (step < warm) return c.lr * (step + 1) / warm;
  const double t = (step - warm) / std::max(1.0, c.steps - warm);
  return c.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * t)));
}

// AdamW on one parameter; every call is an op on the workers.
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
    const double c1 = 1 - std::pow(beta1, static_cast<double>(t));
    const double c2 = 1 - std::pow(beta2, static_cast<double>(t));
    for (size_t i = 0; i < params.size(); ++i) {
      const Tensor& g = grads[i];
      m[i].mul_(beta1).add_(g, 1 - beta1);
      v[i].mul_(beta2).add_(g * g, 1 - beta2);
      params[i].mul_(1 - lr * weight_decay);
      const Tensor denom = (v[i] * (1 / c2)).sqrt() + eps;
      params[i].sub_(m[i] / denom, lr / c1);
    }
  }
};

class DataParallelTrainer {
 public:
  static constexpr int64_t kTeacherHidden = 16;  // a teacher smaller than the student: learnable

  DataParallelTrainer(DeviceMesh mesh, DataParallelConfig c) : mesh_(std::move(mesh)), c_(c) {
    // Teacher and initial parameters: the same on every worker.
    mesh_.manual_seed(c_.seed);
    teacher_.push_back(randn(mesh_, {c_.inputs, kTeacherHidden}) * (1.0 / std::sqrt(double(c_.inputs))));
    teacher_.push_back(randn(mesh_, {kTeacherHidden, c_.classes}) * (3.0 / std::sqrt(double(kTeacherHidden))));
    int64_t fan_in = c_.inputs;
    for (int64_t l = 0; l < c_.layers; ++l) {
      const int64_t fan_out = l + 1 == c_.layers ? c_.classes : c_.hidden;
      params_.push_back((randn(mesh_, {fan_in, fan_out}) * (1.0 / std::sqrt(double(fan_in)))).requires_grad_());
      params_.push_back(zeros(mesh_, {fan_out}).requires_grad_());
      fan_in = fan_out;
    }
  }

  // One batch per worker for `step`: x and its teacher labels.
  std::pair<Tensor, Tensor> batch(int64_t step) {
    mesh_.manual_seed(c_.seed * 1000003 + static_cast<uint64_t>(step) + 1, /*per_rank=*/true);
    Tensor x = randn(mesh_, {c_.batch, c_.inputs});
    NoGradGuard no_grad(mesh_);
    Tensor y = tanh(x.matmul(teacher_[0])).matmul(teacher_[1]).argmax(1);
    return {x, y};
  }

  Tensor forward(const Tensor& x) const {
    Tensor h = x;
    for (size_t l = 0; l < params_.size(); l += 2) {
      h = h.matmul(params_[l]) + params_[l + 1];
      if (l + 2 < params_.size()) h = gelu(h);
    }
    return h;
  }

  // One training step; returns this step's loss (each worker's own batch).
  Tensor step(int64_t step, const Tensor& x, const Tensor& y) {
    Tensor loss = cross_entropy(forward(x), y);
    loss.backward();
    std::vector<Tensor> grads = averaged_gradients();
    NoGradGuard no_grad(mesh_);
    opt_.step(params_, grads, learning_rate(c_, step), c_.weight_decay);
    return loss;
  }

  // Gradients averaged over "dp", in buckets of about bucket_bytes, last
  // layer first (the order backward produces them): each bucket is one
  // flat buffer and one all_reduce; the averaged gradients are views of it.
  std::vector<Tensor> averaged_gradients() {
    std::vector<Tensor> out(params_.size());
    size_t end = params_.size();
    while (end > 0) {
      size_t begin = end;
      int64_t bytes = 0;
      while (begin > 0 && (begin == end || bytes + params_[begin - 1].numel() * 4 <= c_.bucket_bytes)) {
        bytes += params_[--begin].numel() * 4;
      }
      std::vector<Tensor> flat;
      for (size_t i = begin; i < end; ++i) flat.push_back(params_[i].grad().view({-1}));
      Tensor bucket = all_reduce(cat(flat), {"dp"}, Reduce::Avg);
      int64_t at = 0;
      for (size_t i = begin; i < end; ++i) {
        out[i] = bucket.narrow(0, at, params_[i].numel()).view(params_[i].sizes());
        at += params_[i].numel();
      }
      end = begin;
    }
    for (auto& p : params_) p.grad().zero_();
    return out;
  }

  std::vector<Tensor>& params() { return params_; }
  const DataParallelConfig& config() const { return c_; }

 private:
  DeviceMesh mesh_;
  DataParallelConfig c_;
  std::vector<Tensor> teacher_;
  std::vector<Tensor> params_;  // weight, bias per layer
  AdamW opt_;
};

}  // namespace cox::examples
