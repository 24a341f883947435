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

// y[i] += alpha * x[i] for i in [0, n).
int axpy_f32_cuda(int64_t n, float alpha, const float* x, float* y, void* stream);
void axpy_f32_cpu(int64_t n, float alpha, const float* x, float* y);

}  // namespace cox::kernels
