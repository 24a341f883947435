// The op encoder: one pass over an op call's arguments that checks them,
// and yields the wire::Op frame's arguments and the meta cache's key. The
// same arguments also become a boxed stack of meta tensors (for inference)
// and a description (for errors).
#pragma once

#include "tensor/handles.hpp"
#include "tensor/op_registry.hpp"

#include <ATen/core/stack.h>

#include <memory>
#include <string>
#include <vector>

namespace cox::tensor {

struct EncodedOp {
  std::vector<uint8_t> frame;  // frame header, type, op id and arguments
  std::string key;             // op id and argument signature
  bool any_requires_grad = false;
  // The first input that is an error value: the op is still sent (so that
  // workers mark its outputs), and its outputs carry that input's error.
  std::shared_ptr<PendingMeta> upstream;
};

// Encodes a call of `op` on `mesh`, reusing `out`'s buffers. Arguments past
// `nargs` take the schema's defaults. May wait for an input's pending
// metadata. Throws InvalidArgument for a bad argument.
void encode_op(const DeviceMesh& mesh, const OpInfo& op, const Arg* args, size_t nargs, EncodedOp& out);

// The call as libtorch takes it, on meta tensors and the Meta device.
torch::jit::Stack meta_stack(const OpInfo& op, const Arg* args, size_t nargs);

// "float[8, 16], 1, [0, 1]"
std::string describe_args(const Arg* args, size_t nargs);

// Cache keys.
void put_key(std::string& key, const void* p, size_t n);
template <class T>
void put_key(std::string& key, T v) {
  put_key(key, &v, sizeof v);
}
void put_tensor_key(std::string& key, const Meta& m);

}  // namespace cox::tensor
