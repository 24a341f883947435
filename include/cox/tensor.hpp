// Remote tensors on a device mesh.
//
//   cox::Controller ctl = cox::Controller::local({.workers = 4});
//   cox::DeviceMesh mesh = ctl.mesh({{"dp", 2}, {"tp", 2}});
//   cox::Tensor w = cox::randn(mesh, {16, 16}, {.requires_grad = true});
//   cox::Tensor y = cox::relu(cox::randn(mesh, {8, 16}).matmul(w)) + 1.0;
//   y.pow(2).mean().backward();
//   at::Tensor g = w.grad().fetch({{"dp", 1}, {"tp", 0}}).get();
//
// A cox::Tensor is a handle: an id, its mesh, and its metadata (sizes, dtype),
// known on the controller at once because every op runs on meta tensors
// first (or, for ops without a meta kernel, learned from a worker once per
// signature). Each worker of the mesh holds one shard under that id. Ops on a
// mesh run on its workers only, in the order the controller issued them. A
// failing op does not kill its workers: its outputs become error values, ops
// that read them become errors too, and fetching one throws cox::RemoteError.
// Each failure is also reported to the controller, and the next sync raises
// it unless a fetch already has (see DeviceMesh::sync).
#pragma once

#include <cox/controller.hpp>
#include <cox/export.hpp>
#include <cox/shape.hpp>

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace cox {

class Tensor;
namespace tensor {
class Engine;
struct MeshInfo;
struct TensorImpl;
}  // namespace tensor

// A controller plus a Shape over its workers. Cheap to copy.
class COX_API DeviceMesh {
 public:
  const Shape& shape() const noexcept;
  int64_t size() const noexcept { return shape().size(); }
  int64_t size(std::string_view dim) const { return shape().size(dim); }
  std::vector<int64_t> ranks() const { return shape().ranks(); }

  DeviceMesh slice(std::string_view dim, int64_t index) const;
  DeviceMesh slice(std::string_view dim, int64_t begin, int64_t end, int64_t step = 1) const;
  DeviceMesh slice(const NamedCoord& indices) const;
  DeviceMesh split(std::string_view dim, const std::vector<std::string>& names,
                   const std::vector<int64_t>& sizes) const;
  DeviceMesh rename(std::string_view from, std::string_view to) const;
  DeviceMesh flatten(std::string_view name) const;
  // The same workers with dims reordered (Shape::transpose, Shape::permute):
  // ops and collectives work on the result as on any mesh; a collective's
  // members are ordered row-major over its dims as listed, whatever the
  // order of the mesh's dims.
  DeviceMesh transpose(std::string_view a, std::string_view b) const;
  DeviceMesh permute(const std::vector<std::string>& order) const;

  // The groups a collective over `dims` of this mesh forms (every dim when
  // empty): the global ranks of each group, members in group order (row-major
  // over `dims` as listed: member i keeps block i of a reduce_scatter, root 0
  // of a broadcast is members[0]), groups in row-major order of the other
  // dims. The collectives use exactly these; asking sets nothing up.
  // InvalidArgument for an unknown or repeated dim.
  std::vector<std::vector<int64_t>> groups(const std::vector<std::string>& dims = {}) const;

  // Waits until every worker of this mesh has run everything issued so far.
  // Throws as Controller::sync does: the first RemoteError reported since
  // the last sync that no fetch has raised yet. Fetching a shard of a failed
  // op's error value (or of anything computed from it) delivers that op's
  // error for every worker that ran it; a different failing op still
  // surfaces here.
  void sync(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const;

  // Seeds the random generators of this mesh's workers: the same values on
  // every worker, or (per_rank) different ones per rank.
  void manual_seed(uint64_t seed, bool per_rank = false) const;

  // Loads a shared library of remote functions (COX_REMOTE_FUNCTION) into
  // every worker of this mesh.
  void load_library(const std::string& path) const;

  // Live tensors on one worker of this mesh (by coordinate): for tests and
  // leak hunting.
  int64_t live_tensors(const NamedCoord& coord) const;

  bool operator==(const DeviceMesh& o) const noexcept;
  bool operator!=(const DeviceMesh& o) const noexcept { return !(*this == o); }

 private:
  friend struct detail::Access;
  DeviceMesh(std::shared_ptr<tensor::Engine> engine, std::shared_ptr<const tensor::MeshInfo> info);
  DeviceMesh with(Shape s) const;
  std::shared_ptr<tensor::Engine> engine_;
  std::shared_ptr<const tensor::MeshInfo> info_;
};

// A fetched shard, on its way.
class COX_API TensorFuture {
 public:
  // The shard as a CPU tensor. Throws RemoteError for an error value,
  // WorkerLost, or Timeout when `timeout` passes first.
  at::Tensor get(std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  TensorFuture(TensorFuture&& other) noexcept;
  TensorFuture& operator=(TensorFuture&& other) noexcept;
  TensorFuture(const TensorFuture&) = delete;
  TensorFuture& operator=(const TensorFuture&) = delete;
  // A future dropped before its value arrived releases the reply (now, or
  // as it arrives): nothing is held for a fetch nobody reads.
  ~TensorFuture();

 private:
  friend struct detail::Access;
  TensorFuture(std::shared_ptr<tensor::Engine> engine, uint64_t request, int rank);
  void release() noexcept;

  std::shared_ptr<tensor::Engine> engine_;
  uint64_t request_;
  int rank_;
  bool answered_ = false;  // the reply was taken (a value or an error)
  std::optional<at::Tensor> value_;
};

struct TensorOptions {
  std::optional<at::ScalarType> dtype;  // default: float32
  bool requires_grad = false;
};

// One boxed argument of an aten op: none, a tensor or a list of them, an
// integer, a float, a bool, a list of integers, a dtype, or a string.
class COX_API Arg {
 public:
  Arg(std::nullopt_t) : v_(None{}) {}
  Arg(const Tensor& t);
  Arg(std::vector<Tensor> ts);
  Arg(int v) : v_(static_cast<int64_t>(v)) {}
  Arg(int64_t v) : v_(v) {}
  Arg(double v) : v_(v) {}
  Arg(bool v) : v_(v) {}
  Arg(std::vector<int64_t> v) : v_(std::move(v)) {}
  Arg(std::initializer_list<int64_t> v) : v_(std::vector<int64_t>(v)) {}
  Arg(at::ScalarType v) : v_(v) {}
  Arg(std::string v) : v_(std::move(v)) {}
  Arg(const char* v) : v_(std::string(v)) {}

 private:
  friend struct detail::Access;
  struct None {};
  using Value = std::variant<None, std::shared_ptr<tensor::TensorImpl>, std::vector<std::shared_ptr<tensor::TensorImpl>>,
                             int64_t, double, bool, std::vector<int64_t>, at::ScalarType, std::string>;
  Value v_;
};

class COX_API Tensor {
 public:
  Tensor() = default;

  bool defined() const noexcept { return impl_ != nullptr; }
  const DeviceMesh& mesh() const;
  // Metadata, known on the controller (for ops without a meta kernel the
  // first use may wait for a worker's report).
  std::vector<int64_t> sizes() const;
  int64_t size(int64_t dim) const;
  int64_t dim() const;
  int64_t numel() const;
  at::ScalarType dtype() const;
  bool requires_grad() const;
  // The meta tensor describing each shard (sizes, strides, dtype).
  at::Tensor meta() const;

  // The shard at `coord` of the mesh, as a CPU tensor.
  TensorFuture fetch(const NamedCoord& coord) const;
  TensorFuture fetch(const Coord& coord) const;
  // Every shard, in row-major order of the mesh's coordinates.
  std::vector<at::Tensor> fetch_all(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const;
  // The value of a one-element tensor from the mesh's first worker.
  template <class T>
  T item() const;

  // Autograd, run on the workers: from a one-element tensor, or from any
  // tensor given its gradient (of the same sizes and mesh), as a pipeline
  // stage or a tensor-parallel layer does with a gradient it received.
  void backward(const Tensor& grad = Tensor()) const;
  Tensor grad() const;

  // The same shards on another mesh of the same dim sizes: each worker's
  // shard moves to the worker at the same coordinate of `dst` (a pipeline
  // hop between stages). Not recorded by autograd.
  Tensor to_mesh(const DeviceMesh& dst) const;

  // The typed ops (add, matmul, sum, view, add_, ...): one line each in the
  // op table src/ops/ops.def, declared from it here.
#include <cox/tensor_methods.inc>

 private:
  friend struct detail::Access;
  explicit Tensor(std::shared_ptr<tensor::TensorImpl> impl) : impl_(std::move(impl)) {}
  const tensor::TensorImpl& checked() const;
  std::shared_ptr<tensor::TensorImpl> impl_;
};

COX_API Tensor operator+(const Tensor& a, const Tensor& b);
COX_API Tensor operator-(const Tensor& a, const Tensor& b);
COX_API Tensor operator*(const Tensor& a, const Tensor& b);
COX_API Tensor operator/(const Tensor& a, const Tensor& b);
COX_API Tensor operator+(const Tensor& a, double b);
COX_API Tensor operator-(const Tensor& a, double b);
COX_API Tensor operator*(const Tensor& a, double b);
COX_API Tensor operator/(const Tensor& a, double b);
COX_API Tensor operator*(double a, const Tensor& b);
COX_API Tensor operator-(const Tensor& a);

// Any aten op by name and overload ("" for the default overload), arguments
// in schema order; missing trailing arguments take the schema's defaults.
// Returns one Tensor per tensor output (a Tensor[] output contributes each).
COX_API std::vector<Tensor> call_op(const DeviceMesh& mesh, const std::string& name, const std::string& overload,
                                    const std::vector<Arg>& args);
// The same, for ops that read at least one tensor (the mesh is theirs).
COX_API std::vector<Tensor> call_op(const std::string& name, const std::string& overload, const std::vector<Arg>& args);

// Creation.
COX_API Tensor zeros(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o = {});
COX_API Tensor ones(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o = {});
COX_API Tensor full(const DeviceMesh& mesh, std::vector<int64_t> sizes, double value, TensorOptions o = {});
COX_API Tensor empty(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o = {});
COX_API Tensor rand(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o = {});
COX_API Tensor randn(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o = {});
COX_API Tensor arange(const DeviceMesh& mesh, int64_t end, TensorOptions o = {});
// Each worker's index along `dim` of the mesh, as a 0-d int64 tensor.
COX_API Tensor coordinate(const DeviceMesh& mesh, std::string_view dim);
// Each worker's global rank (its index among the controller's workers), as a
// 0-d int64 tensor.
COX_API Tensor global_rank(const DeviceMesh& mesh);
// Each worker's rank within the mesh (its position in row-major order of the
// mesh's coordinates, 0..mesh.size()-1: Shape::local_index), as a 0-d int64
// tensor. On a sub-mesh or a permuted mesh it differs from global_rank.
COX_API Tensor mesh_rank(const DeviceMesh& mesh);
// A controller tensor copied to every worker of the mesh. Up to 1 MiB per
// worker is copied into the send queue and this returns at once; a larger
// value is streamed from its own memory and this returns once it is written
// (so the value may be changed after). Throws cox::Timeout when a worker
// takes no data for ControllerOptions::send_timeout; the bytes not yet
// written are still sent from the value's memory, which must then stay
// valid (it does for any tensor that owns its storage).
COX_API Tensor from_local(const DeviceMesh& mesh, const at::Tensor& value, bool requires_grad = false);
// A controller tensor split into equal chunks along `tensor_dim`, chunk i to
// the workers at index i of `mesh_dim`.
COX_API Tensor scatter(const DeviceMesh& mesh, const at::Tensor& value, int64_t tensor_dim, std::string_view mesh_dim);

// The typed free functions (relu, softmax, cat, linear, cross_entropy, ...):
// one line each in the op table src/ops/ops.def, declared from it here.
#include <cox/tensor_functions.inc>

// Disables gradient recording on every worker of the controller for its
// lifetime (for optimizer steps).
class COX_API NoGradGuard {
 public:
  explicit NoGradGuard(const DeviceMesh& mesh);
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  DeviceMesh mesh_;
  bool previous_;
};

// Calls a remote function (COX_REMOTE_FUNCTION in a library loaded with
// DeviceMesh::load_library) on every worker of the mesh; returns one handle
// per output. The first call with a signature (name, inputs' metadata,
// scalars) waits for a worker to report the outputs' count and metadata;
// later calls reuse them without waiting.
COX_API std::vector<Tensor> call_remote(const DeviceMesh& mesh, const std::string& name,
                                        const std::vector<Tensor>& inputs, const std::vector<double>& scalars = {});

}  // namespace cox
