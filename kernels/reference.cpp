// CPU reference implementations of the kernels in kernels/*.cu.
#include "kernels.hpp"

#include <cmath>

namespace cox::kernels {

void adamw_f32_cpu(const TensorLists& t, const AdamWStep& s) {
  const double bc1 = 1 - std::pow(double(s.beta1), double(s.step));
  const double bc2 = 1 - std::pow(double(s.beta2), double(s.step));
  const float step_size = static_cast<float>(s.lr / bc1);
  const float inv_bc2 = static_cast<float>(1 / bc2);
  const float decay = 1 - s.lr * s.weight_decay;
  for (int k = 0; k < t.count; ++k) {
    float* p = t.params[k];
    const float* g = t.grads[k];
    float* m = t.state1[k];
    float* v = t.state2[k];
    for (int64_t i = 0; i < t.n[k]; ++i) {
      m[i] = s.beta1 * m[i] + (1 - s.beta1) * g[i];
      v[i] = s.beta2 * v[i] + (1 - s.beta2) * g[i] * g[i];
      p[i] = p[i] * decay - step_size * m[i] / (std::sqrt(v[i] * inv_bc2) + s.eps);
    }
  }
}

void sgd_momentum_f32_cpu(const TensorLists& t, const SgdStep& s) {
  for (int k = 0; k < t.count; ++k) {
    float* p = t.params[k];
    const float* g = t.grads[k];
    float* buf = t.state1[k];
    for (int64_t i = 0; i < t.n[k]; ++i) {
      const float d = g[i] + s.weight_decay * p[i];
      buf[i] = s.first ? d : s.momentum * buf[i] + (1 - s.dampening) * d;
      p[i] -= s.lr * (s.nesterov ? d + s.momentum * buf[i] : buf[i]);
    }
  }
}

void axpy_f32_cpu(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace cox::kernels
