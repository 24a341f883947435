// Call-site checks the meta kernels miss.
//
// The controller runs every op on meta tensors to learn its outputs and to
// reject a wrong call where it is made. Some meta kernels (libtorch 1.13 has
// many; later versions fewer) accept calls whose real kernels refuse them:
// matmul of float32 by int64, index_select with a float index, bitwise_and
// of floats, copy_ from a tensor that does not broadcast... Without these
// checks such a call would only fail on the workers, as an error value seen
// at fetch. The rules here are keyed by op name and read the inputs'
// metadata; they add nothing for a call the meta kernel already refuses
// (its message is kept), and they hold on every libtorch the workers may run.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace cox::tensor {

// Runs `op` on the meta tensors of `stack` (op.callBoxed(stack)), then checks
// the call against the rules of its op: whether the meta run succeeded or
// found no meta kernel (c10::NotImplementedError, rethrown when the rules
// pass). A meta kernel that refuses only because its inputs are meta tensors
// counts as none. A rule that fails throws std::invalid_argument saying
// which argument is wrong and its value (dtype, sizes, dim).
void call_meta_checked(const c10::OperatorHandle& op, torch::jit::Stack& stack);

}  // namespace cox::tensor
