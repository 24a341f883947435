// Multi-tensor optimizer steps: one launch updates every parameter of a list
// (up to kChunk tensors per launch, passed by value in the kernel's
// arguments), where libtorch would launch several kernels per parameter.
#include "kernels.hpp"

#include <cuda_runtime.h>

#include <cmath>

namespace cox::kernels {
namespace {

constexpr int kChunk = 24;  // tensors per launch: the arguments stay under 4 KiB
constexpr int kThreads = 256;

struct Chunk {
  float* p[kChunk];
  const float* g[kChunk];
  float* s1[kChunk];
  float* s2[kChunk];
  int64_t n[kChunk];
};

// blockIdx.y picks the tensor, blockIdx.x and the threads stride over it.
__global__ void adamw_kernel(Chunk c, float beta1, float beta2, float eps, float decay, float step_size,
                             float inv_bc2) {
  const int k = blockIdx.y;
  float* __restrict__ p = c.p[k];
  const float* __restrict__ g = c.g[k];
  float* __restrict__ m = c.s1[k];
  float* __restrict__ v = c.s2[k];
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < c.n[k]; i += stride) {
    const float gi = g[i];
    const float mi = beta1 * m[i] + (1 - beta1) * gi;
    const float vi = beta2 * v[i] + (1 - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (sqrtf(vi * inv_bc2) + eps);
  }
}

__global__ void sgd_kernel(Chunk c, float lr, float momentum, float dampening, float weight_decay, bool nesterov,
                           bool first) {
  const int k = blockIdx.y;
  float* __restrict__ p = c.p[k];
  const float* __restrict__ g = c.g[k];
  float* __restrict__ buf = c.s1[k];
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < c.n[k]; i += stride) {
    const float d = g[i] + weight_decay * p[i];
    const float b = first ? d : momentum * buf[i] + (1 - dampening) * d;
    buf[i] = b;
    p[i] -= lr * (nesterov ? d + momentum * b : b);
  }
}

// Launches `launch(chunk, grid)` for each run of up to kChunk tensors.
template <class Launch>
int for_each_chunk(const TensorLists& t, Launch&& launch) {
  for (int base = 0; base < t.count; base += kChunk) {
    Chunk c{};
    const int count = t.count - base < kChunk ? t.count - base : kChunk;
    int64_t largest = 0;
    for (int k = 0; k < count; ++k) {
      c.p[k] = t.params[base + k];
      c.g[k] = t.grads[base + k];
      c.s1[k] = t.state1 ? t.state1[base + k] : nullptr;
      c.s2[k] = t.state2 ? t.state2[base + k] : nullptr;
      c.n[k] = t.n[base + k];
      if (c.n[k] > largest) largest = c.n[k];
    }
    if (largest == 0) continue;
    const int64_t blocks = (largest + kThreads - 1) / kThreads;
    const dim3 grid(static_cast<unsigned>(blocks < 1024 ? blocks : 1024), static_cast<unsigned>(count));
    launch(c, grid);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

int adamw_f32_cuda(const TensorLists& t, const AdamWStep& s, void* stream) {
  const double bc1 = 1 - std::pow(double(s.beta1), double(s.step));
  const double bc2 = 1 - std::pow(double(s.beta2), double(s.step));
  const float step_size = static_cast<float>(s.lr / bc1), inv_bc2 = static_cast<float>(1 / bc2);
  const float decay = 1 - s.lr * s.weight_decay;
  return for_each_chunk(t, [&](const Chunk& c, dim3 grid) {
    adamw_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(c, s.beta1, s.beta2, s.eps, decay,
                                                                           step_size, inv_bc2);
  });
}

int sgd_momentum_f32_cuda(const TensorLists& t, const SgdStep& s, void* stream) {
  return for_each_chunk(t, [&](const Chunk& c, dim3 grid) {
    sgd_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(c, s.lr, s.momentum, s.dampening,
                                                                         s.weight_decay, s.nesterov, s.first);
  });
}

}  // namespace cox::kernels
