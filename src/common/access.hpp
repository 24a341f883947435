// The library's own way into the public classes: their runtime and engine
// handles, and an Arg's value. The public headers declare this struct a
// friend and nothing else; it is defined here, in a private header, so user
// code cannot reach the internals by including an installed header.
#pragma once

#include <cox/controller.hpp>
#include <cox/tensor.hpp>

#include <memory>

namespace cox::detail {

struct Access {
  // Controller
  static std::unique_ptr<Controller::Impl>& impl(Controller& c) noexcept { return c.impl_; }

  // DeviceMesh
  static DeviceMesh mesh(std::shared_ptr<tensor::Engine> engine, std::shared_ptr<const tensor::MeshInfo> info) {
    return DeviceMesh(std::move(engine), std::move(info));
  }
  static const std::shared_ptr<tensor::Engine>& engine(const DeviceMesh& m) noexcept { return m.engine_; }
  static const std::shared_ptr<const tensor::MeshInfo>& info(const DeviceMesh& m) noexcept { return m.info_; }

  // Tensor
  static Tensor tensor(std::shared_ptr<tensor::TensorImpl> impl) noexcept { return Tensor(std::move(impl)); }
  static const std::shared_ptr<tensor::TensorImpl>& impl(const Tensor& t) noexcept { return t.impl_; }

  // TensorFuture
  static TensorFuture future(std::shared_ptr<tensor::Engine> engine, uint64_t request, int rank) {
    return TensorFuture(std::move(engine), request, rank);
  }

  // Arg
  using ArgValue = Arg::Value;
  using ArgNone = Arg::None;
  static const ArgValue& value(const Arg& a) noexcept { return a.v_; }
};

}  // namespace cox::detail
