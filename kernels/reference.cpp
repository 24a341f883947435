// CPU reference implementations of the kernels in kernels/*.cu.
#include "kernels.hpp"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>

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

void flatten_cpu(const Bucket& b, void* flat) {
  for (int k = 0; k < b.count; ++k) {
    if (b.bytes[k]) std::memcpy(static_cast<char*>(flat) + b.offset[k], b.data[k], static_cast<size_t>(b.bytes[k]));
  }
}

namespace {
template <class T>
void unflatten_scaled(const Bucket& b, const void* flat, float scale) {
  for (int k = 0; k < b.count; ++k) {
    T* dst = static_cast<T*>(b.data[k]);
    const T* src = reinterpret_cast<const T*>(static_cast<const char*>(flat) + b.offset[k]);
    const int64_t n = b.bytes[k] / static_cast<int64_t>(sizeof(T));
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(static_cast<float>(src[i]) * scale);
  }
}
}  // namespace

void unflatten_cpu(const Bucket& b, const void* flat, ElementType type, float scale) {
  if (scale == 1.0f) {
    for (int k = 0; k < b.count; ++k) {
      if (b.bytes[k]) {
        std::memcpy(b.data[k], static_cast<const char*>(flat) + b.offset[k], static_cast<size_t>(b.bytes[k]));
      }
    }
    return;
  }
  switch (type) {
    case ElementType::kFloat32: return unflatten_scaled<float>(b, flat, scale);
    case ElementType::kFloat16: return unflatten_scaled<c10::Half>(b, flat, scale);
    case ElementType::kBFloat16: return unflatten_scaled<c10::BFloat16>(b, flat, scale);
    case ElementType::kOther: break;
  }
}

void axpy_f32_cpu(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace cox::kernels
