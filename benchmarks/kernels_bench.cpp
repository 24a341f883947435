// Coxswain's kernels (kernels/*.cu, through their ops) against the libtorch
// op sequences a training loop would otherwise run, on one GPU, in the same
// run: AdamW and SGD-momentum over a model's worth of parameter tensors,
// flattening gradients into a bucket and copying them back scaled.
//
//   ours      the op (cox::adamw_, cox::sgd_momentum_, cox::flatten,
//             cox::unflatten_) called through libtorch's dispatcher
//   baseline  the same math as per-tensor libtorch ops, as _foreach ops,
//             and, for AdamW, libtorch's own fused kernel
//             (aten::_fused_adamw_)
//   ratio     baseline time / ours (above 1: ours is faster)
//
// Ops that only newer libtorch versions have (_fused_adamw_, _foreach_lerp_,
// _foreach_copy_) are looked up in the dispatcher at run time and their rows
// skipped, with a line saying so, where the linked libtorch lacks them; so
// this compiles against any libtorch (CI compiles it against Debian's
// CPU-only 1.13 without linking it: that one has no CUDA runtime to link).
//
// Usage: kernels_bench [--quick] [--json FILE]; needs a CUDA libtorch and a GPU.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#ifdef COX_BENCH_CUDA_LIBTORCH
#include <c10/cuda/CUDAStream.h>
#endif
#include <cuda_runtime_api.h>

#include "bench_util.hpp"
#include "ops/registry.hpp"

#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

using namespace cox::bench;

namespace {

// The stream libtorch's ops run on.
cudaStream_t current_stream() {
#ifdef COX_BENCH_CUDA_LIBTORCH
  return c10::cuda::getCurrentCUDAStream().stream();
#else
  return nullptr;  // a CPU libtorch (compiled, never run): the default stream
#endif
}

// Median time per call in microseconds, from CUDA events around `reps` calls.
double time_us(int reps, const std::function<void()>& f) {
  for (int i = 0; i < 5; ++i) f();
  cudaStream_t s = current_stream();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> v;
  for (int round = 0; round < 5; ++round) {
    cudaEventRecord(a, s);
    for (int i = 0; i < reps; ++i) f();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    v.push_back(1000.0 * ms / reps);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return stats(v).median;
}

c10::OperatorHandle op(const char* name) {
  auto h = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!h) throw std::runtime_error(std::string("no op ") + name);
  return *h;
}

void call(const c10::OperatorHandle& h, torch::jit::Stack stack) { h.callBoxed(stack); }

// An aten op this libtorch may lack, with its arguments bound once: the
// given ones in schema order, the rest from the schema's defaults (callBoxed
// does not fill them).
class OptionalOp {
 public:
  OptionalOp(const char* name, const char* overload, torch::jit::Stack args) {
    auto h = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!h) {
      unavailable_ = std::string("this libtorch has no ") + name + (*overload ? std::string(".") + overload : "");
      return;
    }
    const auto& schema = h->schema();
    for (size_t i = args.size(); i < schema.arguments().size(); ++i) {
      const auto& d = schema.arguments()[i].default_value();
      if (!d) {
        unavailable_ = std::string(name) + " here has no default for argument " + schema.arguments()[i].name();
        return;
      }
      args.push_back(*d);
    }
    if (args.size() != schema.arguments().size()) {
      unavailable_ = std::string(name) + " here takes " + std::to_string(schema.arguments().size()) + " arguments";
      return;
    }
    handle_ = *h;
    args_ = std::move(args);
  }
  // Why it cannot be called; empty when it can.
  const std::string& unavailable() const { return unavailable_; }
  void operator()() const { call(*handle_, args_); }

 private:
  std::optional<c10::OperatorHandle> handle_;
  torch::jit::Stack args_;
  std::string unavailable_;
};

// A transformer-like mix of parameter sizes: many small (norms, biases),
// some large (weights).
std::vector<int64_t> model_sizes(bool quick) {
  std::vector<int64_t> sizes;
  const int layers = quick ? 6 : 12;
  const int64_t d = 1024;
  for (int l = 0; l < layers; ++l) {
    for (int64_t n : {d, d, 3 * d * d, 3 * d, d * d, d, d, d, 4 * d * d, 4 * d, 4 * d * d, d}) sizes.push_back(n);
  }
  return sizes;
}

}  // namespace

int run(int argc, char** argv) {
  Options o;
  if (!parse_options(argc, argv, "kernels_bench", o)) return 2;
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < 1) {
    std::printf("kernels_bench: no GPU visible\n");
    return 77;
  }
  cox::ops_detail::ensure_registered();
  const at::TensorOptions f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const std::vector<int64_t> sizes = model_sizes(o.quick);
  std::vector<at::Tensor> p, g, m, v;
  int64_t total = 0;
  for (int64_t n : sizes) {
    p.push_back(at::randn({n}, f32));
    g.push_back(at::randn({n}, f32));
    m.push_back(at::zeros({n}, f32));
    v.push_back(at::zeros({n}, f32));
    total += n;
  }
  std::printf("%zu tensors, %.1f M float32 parameters\n", sizes.size(), total / 1e6);
  const int reps = o.quick ? 10 : 30;
  JsonRows rows;
  std::printf("%-22s %12s %14s %8s\n", "kernel", "ours us", "baseline us", "ratio");
  auto report = [&](const char* name, const char* baseline_name, double ours, double base) {
    std::printf("%-22s %12.1f %14.1f %8.2f   (baseline: %s)\n", name, ours, base, base / ours, baseline_name);
    rows.add({{"bench", "kernels"}, {"case", std::string(name) + "/vs/" + baseline_name}, {"unit", "us"}},
             {{"value", ours}, {"baseline", base}, {"ratio", base / ours}, {"tensors", double(sizes.size())},
              {"elements", double(total)}});
  };
  // A row whose baseline calls an op this libtorch may lack: a line saying
  // so where it does, the error's first line where the call fails.
  auto optional_row = [&](const char* name, const char* baseline_name, double ours, const OptionalOp& needed,
                          const std::function<void()>& baseline) {
    std::string why = needed.unavailable();
    if (why.empty()) {
      try {
        report(name, baseline_name, ours, time_us(reps, baseline));
        return;
      } catch (const std::exception& e) {
        why = e.what();
        why = "failed: " + why.substr(0, why.find('\n'));
      }
    }
    std::printf("%-22s %12s %14s %8s   (baseline: %s: %s)\n", name, "-", "-", "-", baseline_name, why.c_str());
  };

  // AdamW.
  const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  int64_t step = 1;
  const auto adamw = op("cox::adamw_");
  const double ours_adamw = time_us(reps, [&] {
    call(adamw, {at::TensorList(p), at::TensorList(g), at::TensorList(m), at::TensorList(v), lr, b1, b2, eps, wd, step});
  });
  const double seq_adamw = time_us(reps, [&] {
    const double bc1 = 1 - std::pow(b1, double(step)), bc2 = 1 - std::pow(b2, double(step));
    for (size_t i = 0; i < p.size(); ++i) {
      p[i].mul_(1 - lr * wd);
      m[i].lerp_(g[i], 1 - b1);
      v[i].mul_(b2).addcmul_(g[i], g[i], 1 - b2);
      const at::Tensor denom = (v[i].sqrt() / std::sqrt(bc2)).add_(eps);
      p[i].addcdiv_(m[i], denom, -lr / bc1);
    }
  });
  report("adamw", "per-tensor ops", ours_adamw, seq_adamw);
  const OptionalOp foreach_lerp("aten::_foreach_lerp_", "Scalar", {at::TensorList(m), at::TensorList(g), 1 - b1});
  optional_row("adamw", "foreach ops", ours_adamw, foreach_lerp, [&] {
    const double bc1 = 1 - std::pow(b1, double(step)), bc2 = 1 - std::pow(b2, double(step));
    at::_foreach_mul_(p, 1 - lr * wd);
    foreach_lerp();  // m = lerp(m, g, 1 - b1)
    at::_foreach_mul_(v, b2);
    at::_foreach_addcmul_(v, g, g, 1 - b2);
    std::vector<at::Tensor> denom = at::_foreach_sqrt(v);
    at::_foreach_div_(denom, std::sqrt(bc2));
    at::_foreach_add_(denom, eps);
    at::_foreach_addcdiv_(p, m, denom, -lr / bc1);
  });
  // libtorch's own multi-tensor AdamW, as torch.optim.AdamW(fused=True)
  // calls it: the step count as one float tensor per parameter, no AMSGrad,
  // no gradient scaling.
  std::vector<at::Tensor> steps;
  for (size_t i = 0; i < p.size(); ++i) steps.push_back(at::full({}, double(step), f32));
  const OptionalOp fused_adamw("aten::_fused_adamw_", "",
                               {at::TensorList(p), at::TensorList(g), at::TensorList(m), at::TensorList(v),
                                at::TensorList(), at::TensorList(steps), lr, b1, b2, wd, eps, false, false});
  optional_row("adamw", "libtorch fused", ours_adamw, fused_adamw, [&] { fused_adamw(); });

  // SGD with momentum (not the first step).
  const double mom = 0.9;
  const auto sgd = op("cox::sgd_momentum_");
  const double ours_sgd = time_us(reps, [&] {
    call(sgd, {at::TensorList(p), at::TensorList(g), at::TensorList(m), lr, mom, 0.0, wd, false, false});
  });
  const double seq_sgd = time_us(reps, [&] {
    for (size_t i = 0; i < p.size(); ++i) {
      const at::Tensor d = g[i].add(p[i], wd);
      m[i].mul_(mom).add_(d);
      p[i].add_(m[i], -lr);
    }
  });
  report("sgd_momentum", "per-tensor ops", ours_sgd, seq_sgd);

  // Buckets: flatten every gradient, then copy back scaled by 1/8.
  const auto flatten = op("cox::flatten");
  const auto unflatten = op("cox::unflatten_");
  at::Tensor flat;
  const double ours_flatten = time_us(reps, [&] {
    torch::jit::Stack s{at::TensorList(g)};
    flatten.callBoxed(s);
    flat = s[0].toTensor();
  });
  const double cat_flatten = time_us(reps, [&] {
    std::vector<at::Tensor> views;
    views.reserve(g.size());
    for (const auto& t : g) views.push_back(t.view(-1));
    flat = at::cat(views);
  });
  report("flatten", "at::cat", ours_flatten, cat_flatten);
  const double ours_unflatten = time_us(reps, [&] { call(unflatten, {flat, at::TensorList(m), 0.125}); });
  const double seq_unflatten = time_us(reps, [&] {
    int64_t offset = 0;
    for (auto& t : m) {
      t.copy_(flat.narrow(0, offset, t.numel()).view_as(t)).mul_(0.125);
      offset += t.numel();
    }
  });
  report("unflatten_ (x0.125)", "copy_ + mul_", ours_unflatten, seq_unflatten);
  std::vector<int64_t> split;
  for (const auto& t : m) split.push_back(t.numel());
  std::vector<at::Tensor> parts = flat.split_with_sizes(split);  // views of the flat buffer
  const OptionalOp foreach_copy("aten::_foreach_copy_", "", {at::TensorList(m), at::TensorList(parts)});
  optional_row("unflatten_ (x0.125)", "foreach ops", ours_unflatten, foreach_copy, [&] {
    std::vector<at::Tensor> views = flat.split_with_sizes(split);
    at::_foreach_mul_(views, 0.125);  // in place on the flat buffer's views
    foreach_copy();                   // m = parts (the same views, bound once)
  });

  std::printf("ratio: baseline time / ours (above 1: ours is faster)\n");
  if (!o.json.empty() && !rows.write(o.json)) return 1;
  return 0;
}

int main(int argc, char** argv) { return guarded_main("kernels_bench", argc, argv, run); }
