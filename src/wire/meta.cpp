// Tensor metadata: conversions and wire layout.
#include "wire/meta.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace cox::wire {


Meta Meta::of(const at::Tensor& t) {
  Meta m;
  m.dtype = t.scalar_type();
  m.sizes.assign(t.sizes().begin(), t.sizes().end());
  m.strides.assign(t.strides().begin(), t.strides().end());
  m.storage_offset = t.storage_offset();
  return m;
}

at::Tensor Meta::to_meta_tensor() const {
  return at::empty_strided(sizes, strides, at::TensorOptions().dtype(dtype).device(at::kMeta));
}

TensorMeta Meta::to_wire() const {
  TensorMeta m;
  m.dtype = static_cast<uint8_t>(dtype);
  m.sizes.assign(sizes.begin(), sizes.end());
  m.strides.assign(strides.begin(), strides.end());
  m.storage_offset = storage_offset;
  return m;
}

Meta Meta::from_wire(const TensorMeta& w) {
  if (w.dtype >= static_cast<uint8_t>(at::ScalarType::NumOptions)) {
    throw ProtocolError(fmt::format("tensor metadata with unknown dtype {}", w.dtype));
  }
  if (w.sizes.size() != w.strides.size()) {
    throw ProtocolError(fmt::format("tensor metadata with {} sizes and {} strides", w.sizes.size(), w.strides.size()));
  }
  Meta m;
  m.dtype = static_cast<at::ScalarType>(w.dtype);
  m.sizes.assign(w.sizes.begin(), w.sizes.end());
  m.strides.assign(w.strides.begin(), w.strides.end());
  m.storage_offset = w.storage_offset;
  return m;
}

std::string Meta::to_string() const {
  return fmt::format("{}[{}]", c10::toString(dtype), fmt::join(sizes, ", "));
}

}  // namespace cox::wire
