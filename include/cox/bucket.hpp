// Gradient buckets: many tensors packed into one flat buffer, so that one
// collective moves them all, then copied back. Coxswain's kernels (one
// launch per 32 tensors on GPU workers, where libtorch launches a copy per
// tensor), their CPU references on CPU workers.
//
//   Tensor flat = cox::flatten(grads);          // 1-D, grads' dtype
//   cox::all_reduce_(flat, {"dp"});
//   cox::unflatten_(flat, grads, 1.0 / dp);     // averaged, in place
#pragma once

#include <cox/export.hpp>
#include <cox/tensor.hpp>

#include <vector>

namespace cox {

// The tensors (one dtype, one mesh), one after another in a new 1-D tensor.
COX_API Tensor flatten(const std::vector<Tensor>& tensors);
// Copies `flat` back into `tensors` (contiguous, as laid out by flatten),
// each element multiplied by `scale` (float32, float16 and bfloat16 only,
// unless scale is 1).
COX_API void unflatten_(const Tensor& flat, const std::vector<Tensor>& tensors, double scale = 1.0);

}  // namespace cox
