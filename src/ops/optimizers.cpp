// Coxswain's own ops in libtorch's dispatcher (namespace "cox"): the fused
// optimizer steps of kernels/, callable on cox::Tensors like any aten op.
// Registered in every process that links libcoxswain: the controller uses the
// Meta kernels (checks and metadata), CPU workers the CPU references.
#include <cox/optim.hpp>

#include "common/check.hpp"
#include "kernels.hpp"
#include "ops/ops_impl.hpp"
#include "ops/registry.hpp"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace cox {
namespace ops_detail {

// The checks both the controller (on meta tensors) and the workers make.
void check_lists(const char* op, at::TensorList params, at::TensorList grads,
                 std::initializer_list<std::pair<const char*, at::TensorList>> states) {
  TORCH_CHECK(grads.size() == params.size(), op, ": ", params.size(), " params but ", grads.size(), " grads");
  for (auto& [name, s] : states) {
    TORCH_CHECK(s.size() == params.size(), op, ": ", params.size(), " params but ", s.size(), " ", name);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    auto same = [&](const at::Tensor& t, const char* what) {
      TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", what, "[", i, "] is ", t.scalar_type(),
                  "; the fused optimizers take float32");
      TORCH_CHECK(t.sizes() == params[i].sizes(), op, ": ", what, "[", i, "] has sizes ", t.sizes(),
                  " but params[", i, "] has ", params[i].sizes());
    };
    same(params[i], "params");
    same(grads[i], "grads");
    for (auto& [name, s] : states) same(s[i], name);
  }
}

Lists lists(const char* op, c10::DeviceType device, at::TensorList params, at::TensorList grads, at::TensorList s1,
            at::TensorList s2) {
  Lists l;
  auto ptr = [&](const at::Tensor& t, const char* what, size_t i) {
    TORCH_CHECK(t.device().type() == device && t.is_contiguous(), op, ": ", what, "[", i, "] must be a contiguous ",
                c10::DeviceTypeName(device, /*lower_case=*/true), " tensor here, got ", t.device(),
                t.is_contiguous() ? "" : " (not contiguous)");
    if (device == params[0].device().type() && t.device() != params[0].device()) {
      TORCH_CHECK(false, op, ": ", what, "[", i, "] is on ", t.device(), " but params[0] on ", params[0].device());
    }
    return t.data_ptr<float>();
  };
  for (size_t i = 0; i < params.size(); ++i) {
    l.params.push_back(ptr(params[i], "params", i));
    l.grads.push_back(ptr(grads[i], "grads", i));
    if (!s1.empty()) l.state1.push_back(ptr(s1[i], "state", i));
    if (!s2.empty()) l.state2.push_back(ptr(s2[i], "state", i));
    l.n.push_back(params[i].numel());
  }
  return l;
}

void adamw_meta(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
                double, double, double, double, double, int64_t step) {
  check_lists("cox::adamw_", params, grads, {{"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq}});
  TORCH_CHECK(step >= 1, "cox::adamw_: step counts from 1, got ", step);
}

void adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avg, at::TensorList exp_avg_sq,
               double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  adamw_meta(params, grads, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step);
  const Lists l = lists("cox::adamw_", c10::DeviceType::CPU, params, grads, exp_avg, exp_avg_sq);
  kernels::adamw_f32_cpu(l.view(), {static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
                                    static_cast<float>(eps), static_cast<float>(weight_decay), step});
}

void sgd_meta(at::TensorList params, at::TensorList grads, at::TensorList buffers, double, double, double, double,
              bool, bool) {
  check_lists("cox::sgd_momentum_", params, grads, {{"momentum_buffers", buffers}});
}

void sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList buffers, double lr, double momentum,
             double dampening, double weight_decay, bool nesterov, bool first) {
  sgd_meta(params, grads, buffers, lr, momentum, dampening, weight_decay, nesterov, first);
  const Lists l = lists("cox::sgd_momentum_", c10::DeviceType::CPU, params, grads, buffers, {});
  kernels::sgd_momentum_f32_cpu(l.view(), {static_cast<float>(lr), static_cast<float>(momentum),
                                           static_cast<float>(dampening), static_cast<float>(weight_decay),
                                           nesterov, first});
}

}  // namespace ops_detail

using namespace ops_detail;

TORCH_LIBRARY(cox, m) {
  m.def("adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, float lr, "
        "float beta1, float beta2, float eps, float weight_decay, int step) -> ()");
  m.def("sgd_momentum_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, "
        "float momentum, float dampening, float weight_decay, bool nesterov, bool first) -> ()");
}
TORCH_LIBRARY_IMPL(cox, CPU, m) {
  m.impl("adamw_", &adamw_cpu);
  m.impl("sgd_momentum_", &sgd_cpu);
}
TORCH_LIBRARY_IMPL(cox, Meta, m) {
  m.impl("adamw_", &adamw_meta);
  m.impl("sgd_momentum_", &sgd_meta);
}
// Optimizer steps record no autograd history (they run under no_grad); every
// autograd key, the meta tensors' too, passes straight through.
TORCH_LIBRARY_IMPL(cox, Autograd, m) {
  m.impl("adamw_", torch::CppFunction::makeFallthrough());
  m.impl("sgd_momentum_", torch::CppFunction::makeFallthrough());
}

namespace ops_detail {
// Called by the tensor engine and the worker, so that the linker keeps
// these files (and their registrations) in every program.
void ensure_registered() {
  buckets_registered();
#ifdef COX_CUDA_OPS
  cuda_ops_registered();
#endif
}
}  // namespace ops_detail

void fused_adamw_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                  const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq, const AdamWOptions& o,
                  int64_t step) {
  COX_CHECK_ARG(!params.empty(), "fused_adamw_: no parameters");
  call_op("cox::adamw_", "", {params, grads, exp_avg, exp_avg_sq, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, step});
}

void fused_sgd_momentum_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                         const std::vector<Tensor>& buffers, const SgdOptions& o, bool first) {
  COX_CHECK_ARG(!params.empty(), "fused_sgd_momentum_: no parameters");
  call_op("cox::sgd_momentum_", "",
          {params, grads, buffers, o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov, first});
}

}  // namespace cox
