// The single-process reference the training examples are checked against:
// the MLP and AdamW in plain libtorch, written out here independently of
// the examples' code.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cmath>
#include <vector>

namespace cox::test {

struct ReferenceModel {
  std::vector<at::Tensor> params, m, v;  // (weight, bias) per layer
  int64_t t = 0;

  explicit ReferenceModel(std::vector<at::Tensor> p) : params(std::move(p)) {
    for (auto& x : params) {
      x.requires_grad_(true);
      m.push_back(at::zeros_like(x));
      v.push_back(at::zeros_like(x));
    }
  }

  at::Tensor forward(const at::Tensor& x) const {
    at::Tensor h = x;
    for (size_t l = 0; l < params.size(); l += 2) {
      h = h.matmul(params[l]) + params[l + 1];
      if (l + 2 < params.size()) h = at::gelu(h);
    }
    return h;
  }

  // Loss on the whole batch, backward, and one AdamW step; returns the loss.
  double step(const at::Tensor& x, const at::Tensor& y, double lr, double weight_decay) {
    at::Tensor loss = at::cross_entropy_loss(forward(x), y);
    torch::autograd::backward({loss});
    c10::NoGradGuard no_grad;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    ++t;
    for (size_t i = 0; i < params.size(); ++i) {
      at::Tensor g = params[i].grad();
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const at::Tensor m_hat = m[i] / (1 - std::pow(b1, double(t))), v_hat = v[i] / (1 - std::pow(b2, double(t)));
      params[i].mul_(1 - lr * weight_decay);
      params[i].sub_(lr * m_hat / (v_hat.sqrt() + eps));
      params[i].grad().zero_();
    }
    return loss.item<double>();
  }
};

}  // namespace cox::test
