// Gradient bucketing: packs many tensors into one flat buffer (and back) in
// one launch per kChunk tensors, where libtorch would launch a copy per
// tensor (at::cat, then split + copy_). The copies move 16 bytes per thread
// when both sides are 16-byte aligned; unpacking can scale as it goes (the
// 1/N of a gradient average).
#include "kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace cox::kernels {
namespace {

constexpr int kChunk = 32;
constexpr int kThreads = 256;

struct Chunk {
  char* data[kChunk];
  int64_t bytes[kChunk];
  int64_t offset[kChunk];
};

// Copies n bytes; blockIdx.x and the threads stride over them.
__device__ void copy_bytes(char* __restrict__ dst, const char* __restrict__ src, int64_t n) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0) {
    const int64_t vectors = n / 16;
    auto* d = reinterpret_cast<uint4*>(dst);
    const auto* s = reinterpret_cast<const uint4*>(src);
    for (int64_t i = first; i < vectors; i += stride) d[i] = s[i];
    for (int64_t i = vectors * 16 + first; i < n; i += stride) dst[i] = src[i];
  } else {
    for (int64_t i = first; i < n; i += stride) dst[i] = src[i];
  }
}

__global__ void flatten_kernel(Chunk c, char* flat) {
  const int k = blockIdx.y;
  copy_bytes(flat + c.offset[k], c.data[k], c.bytes[k]);
}

__global__ void unflatten_copy_kernel(Chunk c, const char* flat) {
  const int k = blockIdx.y;
  copy_bytes(c.data[k], flat + c.offset[k], c.bytes[k]);
}

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ inline T from_float(float x);
template <>
__device__ inline float from_float<float>(float x) { return x; }
template <>
__device__ inline __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <class T>
__global__ void unflatten_scale_kernel(Chunk c, const char* flat, float scale) {
  const int k = blockIdx.y;
  T* __restrict__ dst = reinterpret_cast<T*>(c.data[k]);
  const T* __restrict__ src = reinterpret_cast<const T*>(flat + c.offset[k]);
  const int64_t n = c.bytes[k] / int64_t(sizeof(T));
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dst[i] = from_float<T>(to_float(src[i]) * scale);
  }
}

template <class Launch>
int for_each_chunk(const Bucket& b, int64_t unit, Launch&& launch) {
  for (int base = 0; base < b.count; base += kChunk) {
    Chunk c{};
    const int count = b.count - base < kChunk ? b.count - base : kChunk;
    int64_t largest = 0;
    for (int k = 0; k < count; ++k) {
      c.data[k] = static_cast<char*>(b.data[base + k]);
      c.bytes[k] = b.bytes[base + k];
      c.offset[k] = b.offset[base + k];
      if (c.bytes[k] > largest) largest = c.bytes[k];
    }
    if (largest == 0) continue;
    const int64_t units = (largest + unit - 1) / unit;
    const int64_t blocks = (units + kThreads - 1) / kThreads;
    const dim3 grid(static_cast<unsigned>(blocks < 1024 ? blocks : 1024), static_cast<unsigned>(count));
    launch(c, grid);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

int flatten_cuda(const Bucket& b, void* flat, void* stream) {
  return for_each_chunk(b, 16, [&](const Chunk& c, dim3 grid) {
    flatten_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(c, static_cast<char*>(flat));
  });
}

int unflatten_cuda(const Bucket& b, const void* flat, ElementType type, float scale, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  auto f = static_cast<const char*>(flat);
  if (scale == 1.0f) {
    return for_each_chunk(b, 16, [&](const Chunk& c, dim3 grid) { unflatten_copy_kernel<<<grid, kThreads, 0, s>>>(c, f); });
  }
  switch (type) {
    case ElementType::kFloat32:
      return for_each_chunk(b, 4, [&](const Chunk& c, dim3 grid) {
        unflatten_scale_kernel<float><<<grid, kThreads, 0, s>>>(c, f, scale);
      });
    case ElementType::kFloat16:
      return for_each_chunk(b, 2, [&](const Chunk& c, dim3 grid) {
        unflatten_scale_kernel<__half><<<grid, kThreads, 0, s>>>(c, f, scale);
      });
    case ElementType::kBFloat16:
      return for_each_chunk(b, 2, [&](const Chunk& c, dim3 grid) {
        unflatten_scale_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(c, f, scale);
      });
    case ElementType::kOther:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace cox::kernels
