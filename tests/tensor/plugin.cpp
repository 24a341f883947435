// A library of remote functions, built by the tests and loaded by workers.
#include <cox/remote.hpp>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <stdexcept>

namespace {

// out = a * s0 + b, and its sum.
std::vector<at::Tensor> scaled_add(const std::vector<at::Tensor>& in, const std::vector<double>& s) {
  if (in.size() != 2 || s.size() != 1) throw std::invalid_argument("scaled_add takes 2 tensors and 1 scalar");
  at::Tensor out = in[0] * s[0] + in[1];
  return {out, out.sum()};
}

// One SGD step on every parameter, in place: p -= lr * g.
std::vector<at::Tensor> sgd_step(const std::vector<at::Tensor>& in, const std::vector<double>& s) {
  c10::NoGradGuard no_grad;
  const size_t n = in.size() / 2;
  for (size_t i = 0; i < n; ++i) in[i].sub_(in[n + i] * s.at(0));
  return {};
}

}  // namespace

COX_REMOTE_FUNCTION(scaled_add, scaled_add);
COX_REMOTE_FUNCTION(sgd_step, sgd_step);
