// The op registry: aten ops resolved once per process, with what dispatch
// needs from their schemas. Like libtorch's dispatcher, which it indexes,
// it is global; an op's id is its index, the same for every controller.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cox::tensor {

struct OpInfo {
  uint32_t id = 0;
  std::string name, overload, qualified;
  c10::OperatorHandle handle;
  size_t nargs = 0;
  std::vector<bool> device_arg;          // arguments of type Device or Device?
  std::vector<c10::IValue> defaults;     // per argument (None where it has none)
  std::vector<bool> has_default;
  std::vector<int> return_writes_arg;    // per return: the argument it writes in place, or -1
  bool returns_list = false;             // some return is a Tensor[]
  // Ops that set requires_grad on their output themselves.
  bool is_detach = false, is_requires_grad_ = false;

  explicit OpInfo(c10::OperatorHandle h) : handle(std::move(h)) {}
};

// Resolves "aten::add" + "Tensor" once per process; InvalidArgument when no
// such op exists.
const OpInfo& intern_op(const std::string& name, const std::string& overload);

}  // namespace cox::tensor
