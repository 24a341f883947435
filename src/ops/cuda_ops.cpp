// The CUDA registrations of Coxswain's ops: the kernels of kernels/*.cu on
// the current CUDA stream. Compiled where libtorch has CUDA.
#include "ops/ops_impl.hpp"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

namespace cox::ops_detail {
namespace {

void check_launch(int error, const char* op) {
  TORCH_CHECK(error == 0, op, ": kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(error)));
}

void* stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void adamw_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  adamw_meta(params, grads, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step);
  if (params.empty()) return;
  c10::cuda::CUDAGuard guard(params[0].device());
  const Lists l = lists("cox::adamw_", c10::DeviceType::CUDA, params, grads, exp_avg, exp_avg_sq);
  check_launch(kernels::adamw_f32_cuda(l.view(),
                                       {static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
                                        static_cast<float>(eps), static_cast<float>(weight_decay), step},
                                       stream_of(params[0])),
               "cox::adamw_");
}

void sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList buffers, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool first) {
  sgd_meta(params, grads, buffers, lr, momentum, dampening, weight_decay, nesterov, first);
  if (params.empty()) return;
  c10::cuda::CUDAGuard guard(params[0].device());
  const Lists l = lists("cox::sgd_momentum_", c10::DeviceType::CUDA, params, grads, buffers, {});
  check_launch(kernels::sgd_momentum_f32_cuda(l.view(),
                                              {static_cast<float>(lr), static_cast<float>(momentum),
                                               static_cast<float>(dampening), static_cast<float>(weight_decay),
                                               nesterov, first},
                                              stream_of(params[0])),
               "cox::sgd_momentum_");
}

at::Tensor flatten_cuda(at::TensorList tensors) {
  const at::Tensor meta = flatten_meta(tensors);
  c10::cuda::CUDAGuard guard(tensors[0].device());
  at::Tensor flat = at::empty(meta.sizes(), tensors[0].options());
  std::vector<at::Tensor> keep;
  keep.reserve(tensors.size());
  for (const auto& t : tensors) keep.push_back(t.contiguous());
  const BucketLayout b = layout("cox::flatten", keep, true);
  check_launch(kernels::flatten_cuda(b.view(), flat.data_ptr(), stream_of(flat)), "cox::flatten");
  return flat;
}

void unflatten_cuda(const at::Tensor& flat, at::TensorList tensors, double scale) {
  unflatten_meta(flat, tensors, scale);
  c10::cuda::CUDAGuard guard(flat.device());
  const BucketLayout b = layout("cox::unflatten_", tensors, true);
  const at::Tensor src = flat.contiguous();
  check_launch(kernels::unflatten_cuda(b.view(), src.data_ptr(), element_type(src.scalar_type()),
                                       static_cast<float>(scale), stream_of(src)),
               "cox::unflatten_");
}

}  // namespace

void cuda_ops_registered() {}

}  // namespace cox::ops_detail

TORCH_LIBRARY_IMPL(cox, CUDA, m) {
  m.impl("adamw_", &cox::ops_detail::adamw_cuda);
  m.impl("sgd_momentum_", &cox::ops_detail::sgd_cuda);
  m.impl("flatten", &cox::ops_detail::flatten_cuda);
  m.impl("unflatten_", &cox::ops_detail::unflatten_cuda);
}
