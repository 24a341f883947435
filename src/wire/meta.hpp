// Tensor metadata as the controller tracks it and as it travels: dtype,
// sizes, strides, storage offset (with libtorch types; TensorMeta is its
// wire form).
#pragma once

#include "wire/messages.hpp"

#include <ATen/core/Tensor.h>
#include <c10/util/SmallVector.h>

#include <string>

namespace cox::wire {

// What the controller knows of a shard: enough to build a meta tensor.
struct Meta {
  at::ScalarType dtype = at::kFloat;
  c10::SmallVector<int64_t, 6> sizes, strides;
  int64_t storage_offset = 0;

  static Meta of(const at::Tensor& t);
  at::Tensor to_meta_tensor() const;
  TensorMeta to_wire() const;
  static Meta from_wire(const TensorMeta& m);
  std::string to_string() const;  // "float[8, 16]"
};

}  // namespace cox::wire
