// Fused optimizer steps over lists of parameters: one op per step for the
// whole list (Coxswain's kernels in kernels/: a multi-tensor CUDA kernel on
// GPU workers, its CPU reference on CPU workers), where the same step from
// aten ops costs several ops per parameter. All tensors float32, on one mesh,
// each list as long as `params`, element i of each the sizes of params[i].
// Bad lists throw InvalidArgument at the call site.
#pragma once

#include <cox/export.hpp>
#include <cox/tensor.hpp>

#include <vector>

namespace cox {

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
};
// AdamW with decoupled weight decay; `step` counts from 1 (bias correction).
COX_API void fused_adamw_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                          const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                          const AdamWOptions& options, int64_t step);

struct SgdOptions {
  double lr = 1e-2, momentum = 0.9, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};
// SGD with momentum as PyTorch defines it; `first`: the buffers start as the
// gradient (the first step).
COX_API void fused_sgd_momentum_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                                 const std::vector<Tensor>& momentum_buffers, const SgdOptions& options, bool first);

}  // namespace cox
