// y += alpha * x: the smallest kernel that exercises the CUDA build, and the
// update step that fused optimizer kernels generalise.
#include "kernels.hpp"

#include <cuda_runtime.h>

namespace cox::kernels {
namespace {

__global__ void axpy_f32_kernel(int64_t n, float alpha, const float* __restrict__ x,
                                float* __restrict__ y) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] += alpha * x[i];
  }
}

}  // namespace

int axpy_f32_cuda(int64_t n, float alpha, const float* x, float* y, void* stream) {
  if (n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < 65535 ? blocks : 65535);
  axpy_f32_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(n, alpha, x, y);
  return cudaGetLastError();
}

}  // namespace cox::kernels
