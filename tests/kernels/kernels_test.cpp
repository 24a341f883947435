// Coxswain's CUDA kernels against their CPU references, on a real GPU.
// Without a visible GPU the binary exits 77, which CTest reports as skipped.
#include "kernels.hpp"

#include <cuda_runtime.h>

#include <catch2/catch.hpp>

#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

namespace {

bool have_gpu() {
  int n = 0;
  // Without a driver this fails (error 35 and others): that means no GPU.
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

struct SkipWithoutGpu {
  SkipWithoutGpu() {
    if (!have_gpu()) {
      std::printf("skipped: no CUDA device visible\n");
      std::exit(77);
    }
  }
} skip_without_gpu;

#define CUDA_REQUIRE(expr)                                              \
  do {                                                                  \
    cudaError_t err_ = (expr);                                          \
    INFO(#expr << ": " << cudaGetErrorString(err_));                    \
    REQUIRE(err_ == cudaSuccess);                                       \
  } while (0)

}  // namespace

TEST_CASE("axpy_f32 matches the CPU reference", "[kernels][gpu]") {
  const int64_t n = GENERATE(1, 255, 256, 257, 100003, 1 << 22);
  std::mt19937 rng(42);
  std::normal_distribution<float> dist;
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = dist(rng);
  for (auto& v : y) v = dist(rng);
  const float alpha = -0.37f;

  float *dx = nullptr, *dy = nullptr;
  CUDA_REQUIRE(cudaMalloc(&dx, n * sizeof(float)));
  CUDA_REQUIRE(cudaMalloc(&dy, n * sizeof(float)));
  cudaStream_t stream;
  CUDA_REQUIRE(cudaStreamCreate(&stream));
  CUDA_REQUIRE(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_REQUIRE(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CUDA_REQUIRE(static_cast<cudaError_t>(cox::kernels::axpy_f32_cuda(n, alpha, dx, dy, stream)));
  CUDA_REQUIRE(cudaStreamSynchronize(stream));
  std::vector<float> got(n);
  CUDA_REQUIRE(cudaMemcpy(got.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
  cox::kernels::axpy_f32_cpu(n, alpha, x.data(), y.data());
  for (int64_t i = 0; i < n; ++i) {
    INFO("element " << i);
    // The GPU fuses multiply and add (one rounding), the reference rounds twice.
    REQUIRE(got[i] == Approx(y[i]).epsilon(1e-6).margin(1e-6));
  }
  cudaStreamDestroy(stream);
  cudaFree(dx);
  cudaFree(dy);
}

namespace {

// Random float lists of the given sizes, on the host and on the GPU.
struct Lists {
  std::vector<std::vector<float>> host;
  std::vector<float*> dev;
  std::vector<int64_t> n;
  Lists(const std::vector<int64_t>& sizes, std::mt19937& rng, bool positive = false) : n(sizes) {
    std::normal_distribution<float> dist;
    for (int64_t s : sizes) {
      std::vector<float> v(static_cast<size_t>(s));
      for (auto& x : v) x = positive ? std::abs(dist(rng)) : dist(rng);
      float* d = nullptr;
      cudaMalloc(&d, std::max<int64_t>(s, 1) * sizeof(float));
      cudaMemcpy(d, v.data(), s * sizeof(float), cudaMemcpyHostToDevice);
      host.push_back(std::move(v));
      dev.push_back(d);
    }
  }
  ~Lists() {
    for (float* d : dev) cudaFree(d);
  }
  std::vector<float*> host_ptrs() {
    std::vector<float*> p;
    for (auto& v : host) p.push_back(v.data());
    return p;
  }
  void require_equal_to_device(float rel) {
    for (size_t k = 0; k < host.size(); ++k) {
      std::vector<float> got(host[k].size());
      cudaMemcpy(got.data(), dev[k], got.size() * sizeof(float), cudaMemcpyDeviceToHost);
      for (size_t i = 0; i < got.size(); ++i) {
        INFO("tensor " << k << " element " << i);
        REQUIRE(got[i] == Approx(host[k][i]).epsilon(rel).margin(1e-6));
      }
    }
  }
};

// More tensors than one launch takes, of sizes around the block size.
const std::vector<int64_t> kSizes{1, 255, 256, 257, 0, 100003, 7, 4096, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                  13, 14, 15, 16, 17, 70000, 31};

}  // namespace

TEST_CASE("adamw_f32 matches the CPU reference over many tensors", "[kernels][gpu][optim]") {
  std::mt19937 rng(7);
  Lists p(kSizes, rng), g(kSizes, rng), m(kSizes, rng), v(kSizes, rng, /*positive=*/true);
  cudaStream_t stream;
  CUDA_REQUIRE(cudaStreamCreate(&stream));
  for (int64_t step = 1; step <= 3; ++step) {
    const cox::kernels::AdamWStep s{1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, step};
    std::vector<const float*> gd(g.dev.begin(), g.dev.end());
    cox::kernels::TensorLists dev{static_cast<int>(kSizes.size()), p.dev.data(), gd.data(), m.dev.data(),
                                  v.dev.data(), kSizes.data()};
    CUDA_REQUIRE(static_cast<cudaError_t>(cox::kernels::adamw_f32_cuda(dev, s, stream)));
    auto ph = p.host_ptrs(), mh = m.host_ptrs(), vh = v.host_ptrs(), gh = g.host_ptrs();
    std::vector<const float*> gc(gh.begin(), gh.end());
    cox::kernels::TensorLists host{static_cast<int>(kSizes.size()), ph.data(), gc.data(), mh.data(), vh.data(),
                                   kSizes.data()};
    cox::kernels::adamw_f32_cpu(host, s);
  }
  CUDA_REQUIRE(cudaStreamSynchronize(stream));
  p.require_equal_to_device(1e-5f);
  m.require_equal_to_device(1e-5f);
  v.require_equal_to_device(1e-5f);
  cudaStreamDestroy(stream);
}

TEST_CASE("sgd_momentum_f32 matches the CPU reference over many tensors", "[kernels][gpu][optim]") {
  std::mt19937 rng(8);
  Lists p(kSizes, rng), g(kSizes, rng), b(kSizes, rng);
  cudaStream_t stream;
  CUDA_REQUIRE(cudaStreamCreate(&stream));
  for (int step = 0; step < 3; ++step) {
    const cox::kernels::SgdStep s{0.05f, 0.9f, 0.0f, 1e-3f, /*nesterov=*/step == 2, /*first=*/step == 0};
    std::vector<const float*> gd(g.dev.begin(), g.dev.end());
    cox::kernels::TensorLists dev{static_cast<int>(kSizes.size()), p.dev.data(), gd.data(), b.dev.data(), nullptr,
                                  kSizes.data()};
    CUDA_REQUIRE(static_cast<cudaError_t>(cox::kernels::sgd_momentum_f32_cuda(dev, s, stream)));
    auto ph = p.host_ptrs(), bh = b.host_ptrs(), gh = g.host_ptrs();
    std::vector<const float*> gc(gh.begin(), gh.end());
    cox::kernels::TensorLists host{static_cast<int>(kSizes.size()), ph.data(), gc.data(), bh.data(), nullptr,
                                   kSizes.data()};
    cox::kernels::sgd_momentum_f32_cpu(host, s);
  }
  CUDA_REQUIRE(cudaStreamSynchronize(stream));
  p.require_equal_to_device(1e-5f);
  b.require_equal_to_device(1e-5f);
  cudaStreamDestroy(stream);
}

TEST_CASE("flatten and unflatten match the CPU reference, at any alignment", "[kernels][gpu][buckets]") {
  std::mt19937 rng(9);
  Lists src(kSizes, rng), dst(kSizes, rng);
  std::vector<int64_t> bytes, offset;
  int64_t total = 0;
  for (int64_t n : kSizes) {
    bytes.push_back(n * 4);
    offset.push_back(total);
    total += n * 4;
  }
  // Odd offsets too: the flat buffer starts 4 bytes into an allocation, so
  // most tensors land off the 16-byte vector path.
  for (int64_t shift : {0, 4}) {
    INFO("flat buffer shifted by " << shift << " bytes");
    char* flat = nullptr;
    CUDA_REQUIRE(cudaMalloc(&flat, total + 16));
    cudaStream_t stream;
    CUDA_REQUIRE(cudaStreamCreate(&stream));
    std::vector<void*> sd(src.dev.begin(), src.dev.end()), dd(dst.dev.begin(), dst.dev.end());
    const cox::kernels::Bucket in{static_cast<int>(kSizes.size()), sd.data(), bytes.data(), offset.data()};
    CUDA_REQUIRE(static_cast<cudaError_t>(cox::kernels::flatten_cuda(in, flat + shift, stream)));

    std::vector<char> want(total);
    auto sh = src.host_ptrs();
    std::vector<void*> shv(sh.begin(), sh.end());
    cox::kernels::flatten_cpu({static_cast<int>(kSizes.size()), shv.data(), bytes.data(), offset.data()}, want.data());
    std::vector<char> got(total);
    CUDA_REQUIRE(cudaStreamSynchronize(stream));
    CUDA_REQUIRE(cudaMemcpy(got.data(), flat + shift, total, cudaMemcpyDeviceToHost));
    REQUIRE(got == want);

    // Back, scaled (float32: one rounding on both sides), into other tensors.
    const cox::kernels::Bucket out{static_cast<int>(kSizes.size()), dd.data(), bytes.data(), offset.data()};
    CUDA_REQUIRE(static_cast<cudaError_t>(
        cox::kernels::unflatten_cuda(out, flat + shift, cox::kernels::ElementType::kFloat32, 0.3f, stream)));
    auto dh = dst.host_ptrs();
    std::vector<void*> dhv(dh.begin(), dh.end());
    cox::kernels::unflatten_cpu({static_cast<int>(kSizes.size()), dhv.data(), bytes.data(), offset.data()},
                                want.data(), cox::kernels::ElementType::kFloat32, 0.3f);
    CUDA_REQUIRE(cudaStreamSynchronize(stream));
    dst.require_equal_to_device(0.0f);
    // Scale 1 is a plain copy of any type.
    CUDA_REQUIRE(static_cast<cudaError_t>(
        cox::kernels::unflatten_cuda(out, flat + shift, cox::kernels::ElementType::kOther, 1.0f, stream)));
    cox::kernels::unflatten_cpu({static_cast<int>(kSizes.size()), dhv.data(), bytes.data(), offset.data()},
                                want.data(), cox::kernels::ElementType::kOther, 1.0f);
    CUDA_REQUIRE(cudaStreamSynchronize(stream));
    dst.require_equal_to_device(0.0f);
    // Scaling a type it cannot scale is refused.
    REQUIRE(cox::kernels::unflatten_cuda(out, flat, cox::kernels::ElementType::kOther, 2.0f, stream) != 0);
    cudaStreamDestroy(stream);
    cudaFree(flat);
  }
}
