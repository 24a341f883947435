// CPU reference implementations of the kernels in kernels/*.cu.
#include "kernels.hpp"

namespace cox::kernels {

void axpy_f32_cpu(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

}  // namespace cox::kernels
