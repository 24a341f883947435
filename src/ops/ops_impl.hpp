// Shared pieces of Coxswain's ops (src/ops/*.cpp): the argument checks and
// the raw views the kernels take, for the CPU, Meta and CUDA registrations.
#pragma once

#include "kernels.hpp"

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <utility>
#include <vector>

namespace cox::ops_detail {

// Float32 tensor lists as the multi-tensor kernels take them.
struct Lists {
  std::vector<float*> params, state1, state2;
  std::vector<const float*> grads;
  std::vector<int64_t> n;
  kernels::TensorLists view() const {
    kernels::TensorLists t;
    t.count = static_cast<int>(params.size());
    t.params = params.data();
    t.grads = grads.data();
    t.state1 = state1.empty() ? nullptr : state1.data();
    t.state2 = state2.empty() ? nullptr : state2.data();
    t.n = n.data();
    return t;
  }
};

void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<std::pair<const char*, at::TensorList>> states);
// Pointers of contiguous tensors on `device` (throws c10::Error otherwise).
Lists lists(const char* op, c10::DeviceType device, at::TensorList params, at::TensorList grads, at::TensorList s1,
            at::TensorList s2);

void adamw_meta(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step);
void sgd_meta(at::TensorList params, at::TensorList grads, at::TensorList buffers, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool first);

// A bucket of tensors (src/ops/buckets.cpp): checked (one dtype, one device,
// contiguous) and laid out one after another.
struct BucketLayout {
  std::vector<void*> data;
  std::vector<int64_t> bytes, offset;
  int64_t total_bytes = 0;
  kernels::Bucket view() const {
    return kernels::Bucket{static_cast<int>(data.size()), data.data(), bytes.data(), offset.data()};
  }
};
// The dtype and element count of the flat buffer for `tensors`.
std::pair<at::ScalarType, int64_t> check_bucket(const char* op, at::TensorList tensors);
BucketLayout layout(const char* op, at::TensorList tensors, bool need_data);
kernels::ElementType element_type(at::ScalarType t);
at::Tensor flatten_meta(at::TensorList tensors);
void unflatten_meta(const at::Tensor& flat, at::TensorList tensors, double scale);

void buckets_registered();
void cuda_ops_registered();

}  // namespace cox::ops_detail
