// Tensor metadata: conversions and wire layout.
#include "tensor/meta.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

namespace cox::tensor {

using wire::Reader;
using wire::Writer;

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

void Meta::encode(Writer& w) const {
  w.put(static_cast<uint8_t>(dtype));
  w.put(static_cast<uint16_t>(sizes.size()));
  for (auto s : sizes) w.put(s);
  for (auto s : strides) w.put(s);
  w.put(storage_offset);
}

Meta Meta::decode(Reader& r) {
  Meta m;
  m.dtype = static_cast<at::ScalarType>(r.get<uint8_t>("meta.dtype"));
  const uint16_t n = r.get<uint16_t>("meta.ndim");
  m.sizes.resize(n);
  m.strides.resize(n);
  for (auto& s : m.sizes) s = r.get<int64_t>("meta.size");
  for (auto& s : m.strides) s = r.get<int64_t>("meta.stride");
  m.storage_offset = r.get<int64_t>("meta.storage_offset");
  return m;
}

std::string Meta::to_string() const {
  return fmt::format("{}[{}]", c10::toString(dtype), fmt::join(sizes, ", "));
}

}  // namespace cox::tensor
