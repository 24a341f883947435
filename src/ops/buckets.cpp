// Gradient buckets as ops (namespace "cox"): cox::flatten packs a list of
// tensors into one flat buffer, cox::unflatten_ copies it back (scaled), so
// that one collective moves many tensors. CPU and Meta here; CUDA in
// cuda_ops.cpp.
#include <cox/bucket.hpp>

#include "common/check.hpp"
#include "ops/ops_impl.hpp"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace cox {
namespace ops_detail {

std::pair<at::ScalarType, int64_t> check_bucket(const char* op, at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), op, ": no tensors");
  const at::ScalarType dtype = tensors[0].scalar_type();
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.scalar_type() == dtype, op, ": tensors[", i, "] is ", t.scalar_type(), " but tensors[0] is ", dtype,
                "; a bucket holds one dtype");
    TORCH_CHECK(t.device() == tensors[0].device(), op, ": tensors[", i, "] is on ", t.device(), " but tensors[0] on ",
                tensors[0].device());
    total += t.numel();
  }
  return {dtype, total};
}

BucketLayout layout(const char* op, at::TensorList tensors, bool need_data) {
  check_bucket(op, tensors);
  BucketLayout b;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (need_data) {
      TORCH_CHECK(t.is_contiguous(), op, ": tensors[", i, "] is not contiguous");
      b.data.push_back(t.data_ptr());
    }
    b.bytes.push_back(static_cast<int64_t>(t.nbytes()));
    b.offset.push_back(b.total_bytes);
    b.total_bytes += static_cast<int64_t>(t.nbytes());
  }
  return b;
}

kernels::ElementType element_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::ElementType::kFloat32;
    case at::kHalf: return kernels::ElementType::kFloat16;
    case at::kBFloat16: return kernels::ElementType::kBFloat16;
    default: return kernels::ElementType::kOther;
  }
}

at::Tensor flatten_meta(at::TensorList tensors) {
  const auto [dtype, total] = check_bucket("cox::flatten", tensors);
  return at::empty({total}, tensors[0].options().dtype(dtype));
}

void unflatten_meta(const at::Tensor& flat, at::TensorList tensors, double scale) {
  const auto [dtype, total] = check_bucket("cox::unflatten_", tensors);
  TORCH_CHECK(flat.dim() == 1 && flat.numel() == total, "cox::unflatten_: flat has sizes ", flat.sizes(),
              " but the tensors hold ", total, " elements");
  TORCH_CHECK(flat.scalar_type() == dtype, "cox::unflatten_: flat is ", flat.scalar_type(), " but the tensors are ",
              dtype);
  TORCH_CHECK(flat.device() == tensors[0].device(), "cox::unflatten_: flat is on ", flat.device(),
              " but the tensors on ", tensors[0].device());
  TORCH_CHECK(scale == 1.0 || element_type(dtype) != kernels::ElementType::kOther,
              "cox::unflatten_: scaling needs float32, float16 or bfloat16 tensors, not ", dtype);
}

namespace {

at::Tensor flatten_cpu(at::TensorList tensors) {
  at::Tensor flat = flatten_meta(tensors);
  flat = at::empty(flat.sizes(), tensors[0].options());
  std::vector<at::Tensor> keep;  // contiguous copies, where needed
  keep.reserve(tensors.size());
  for (const auto& t : tensors) keep.push_back(t.contiguous());
  const BucketLayout b = layout("cox::flatten", keep, true);
  kernels::flatten_cpu(b.view(), flat.data_ptr());
  return flat;
}

void unflatten_cpu(const at::Tensor& flat, at::TensorList tensors, double scale) {
  unflatten_meta(flat, tensors, scale);
  const BucketLayout b = layout("cox::unflatten_", tensors, true);
  const at::Tensor src = flat.contiguous();
  kernels::unflatten_cpu(b.view(), src.data_ptr(), element_type(src.scalar_type()), static_cast<float>(scale));
}

}  // namespace

void buckets_registered() {}

}  // namespace ops_detail

TORCH_LIBRARY_FRAGMENT(cox, m) {
  m.def("flatten(Tensor[] tensors) -> Tensor");
  m.def("unflatten_(Tensor flat, Tensor(a!)[] tensors, float scale=1.0) -> ()");
}
TORCH_LIBRARY_IMPL(cox, CPU, m) {
  m.impl("flatten", &ops_detail::flatten_cpu);
  m.impl("unflatten_", &ops_detail::unflatten_cpu);
}
TORCH_LIBRARY_IMPL(cox, Meta, m) {
  m.impl("flatten", &ops_detail::flatten_meta);
  m.impl("unflatten_", &ops_detail::unflatten_meta);
}
// A bucket is a buffer for communication, outside autograd.
TORCH_LIBRARY_IMPL(cox, Autograd, m) {
  m.impl("flatten", torch::CppFunction::makeFallthrough());
  m.impl("unflatten_", torch::CppFunction::makeFallthrough());
}

Tensor flatten(const std::vector<Tensor>& tensors) {
  COX_CHECK_ARG(!tensors.empty(), "flatten: no tensors");
  return call_op("cox::flatten", "", {tensors}).at(0);
}

void unflatten_(const Tensor& flat, const std::vector<Tensor>& tensors, double scale) {
  COX_CHECK_ARG(!tensors.empty(), "unflatten_: no tensors");
  call_op("cox::unflatten_", "", {flat, tensors, scale});
}

}  // namespace cox
