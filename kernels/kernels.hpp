// Coxswain's own kernels: CUDA launchers (kernels/*.cu, built with nvcc when
// the toolkit is present) and the CPU reference implementations of the same
// math (always built; used on CPU workers and as the oracle in tests).
//
// Launchers take raw pointers and a cudaStream_t passed as void*, so that this
// header needs no CUDA headers, and return the cudaError_t of the launch as an
// int (0 is success).
#pragma once

#include <cstdint>

namespace cox::kernels {

// Lists of float32 tensors for the multi-tensor kernels: tensor i has n[i]
// elements at params[i], grads[i] and, per optimizer, its state buffers.
struct TensorLists {
  int count = 0;
  float* const* params = nullptr;
  const float* const* grads = nullptr;
  float* const* state1 = nullptr;  // AdamW: exp_avg; SGD: momentum buffer
  float* const* state2 = nullptr;  // AdamW: exp_avg_sq
  const int64_t* n = nullptr;
};

// One AdamW step (decoupled weight decay) on every tensor of the lists:
//   p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
//   p -= lr/bc1 * m / (sqrt(v/bc2) + eps),  bc1 = 1-b1^step, bc2 = 1-b2^step.
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1 for the first step
};
int adamw_f32_cuda(const TensorLists& t, const AdamWStep& s, void* stream);
void adamw_f32_cpu(const TensorLists& t, const AdamWStep& s);

// One SGD step with momentum (PyTorch's convention) on every tensor:
//   g += wd*p; buf = first ? g : momentum*buf + (1-dampening)*g;
//   p -= lr * (nesterov ? g + momentum*buf : buf).
struct SgdStep {
  float lr, momentum, dampening, weight_decay;
  bool nesterov, first;
};
int sgd_momentum_f32_cuda(const TensorLists& t, const SgdStep& s, void* stream);
void sgd_momentum_f32_cpu(const TensorLists& t, const SgdStep& s);

// Gradient buckets: many tensors (each contiguous) packed one after
// another into one flat buffer, so that one all_reduce moves them all, and
// unpacked again. Tensor i has bytes[i] bytes at data[i] and starts at byte
// offset[i] of the flat buffer.
struct Bucket {
  int count = 0;
  void* const* data = nullptr;
  const int64_t* bytes = nullptr;
  const int64_t* offset = nullptr;
};
// Element types the unpacking can scale.
enum class ElementType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kOther = 3 };

// flat[offset[i] ...] = data[i][...], for every i.
int flatten_cuda(const Bucket& b, void* flat, void* stream);
void flatten_cpu(const Bucket& b, void* flat);
// data[i][...] = scale * flat[offset[i] ...] for every i, in `type`'s
// arithmetic (computed in float32, rounded to nearest even); scale 1 is a
// plain copy of any type (kOther needs scale 1).
int unflatten_cuda(const Bucket& b, const void* flat, ElementType type, float scale, void* stream);
void unflatten_cpu(const Bucket& b, const void* flat, ElementType type, float scale);

// y[i] += alpha * x[i] for i in [0, n).
int axpy_f32_cuda(int64_t n, float alpha, const float* x, float* y, void* stream);
void axpy_f32_cpu(int64_t n, float alpha, const float* x, float* y);

}  // namespace cox::kernels
