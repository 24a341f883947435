// The public tensor API: meshes, handles, typed ops, creation, fetch.
#include <cox/tensor.hpp>

#include "common/access.hpp"
#include "common/check.hpp"
#include "tensor/engine.hpp"

#include <ATen/ATen.h>

namespace cox {

using detail::Access;
using tensor::Engine;
using tensor::intern_op;
using tensor::MeshInfo;
using tensor::OpInfo;
using tensor::TensorImpl;

namespace {

const std::shared_ptr<Engine>& engine_of(const DeviceMesh& mesh) { return Access::engine(mesh); }
const std::shared_ptr<const MeshInfo>& info_of(const DeviceMesh& mesh) { return Access::info(mesh); }

// Resolves an op once per call site.
#define COX_OP(name, overload)                                   \
  ([]() -> const OpInfo& {                                       \
    static const OpInfo* const op_ = &intern_op(name, overload); \
    return *op_;                                                 \
  }())

std::shared_ptr<const MeshInfo> make_info(Shape s) {
  auto info = std::make_shared<MeshInfo>();
  for (int64_t r : s.ranks()) info->ranks.push_back(static_cast<int>(r));
  info->shape = std::move(s);
  return info;
}

// A scalar multiplier as libtorch wants it: a whole number as an integer, so
// that integer tensors take it too.
Arg scalar_arg(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v))) return Arg(static_cast<int64_t>(v));
  return Arg(v);
}

Tensor first(std::vector<Tensor> outs) {
  COX_INTERNAL_ASSERT(!outs.empty(), "op returned no tensor");
  return std::move(outs.front());
}

Tensor op1(const DeviceMesh& mesh, const OpInfo& op, std::initializer_list<Arg> args) {
  return first(Access::engine(mesh)->call(mesh, op, args.begin(), args.size()));
}

// The mesh of an op's first tensor argument (a tensor, or the first of a
// list), where it runs.
const DeviceMesh& mesh_of(const OpInfo& op, std::initializer_list<Arg> args) {
  for (const Arg& a : args) {
    if (const auto* t = std::get_if<std::shared_ptr<TensorImpl>>(&Access::value(a))) {
      COX_CHECK_ARG(*t != nullptr, "{}: the input tensor is undefined", op.qualified);
      return (*t)->mesh;
    }
    if (const auto* l = std::get_if<std::vector<std::shared_ptr<TensorImpl>>>(&Access::value(a))) {
      COX_CHECK_ARG(!l->empty() && l->front(), "{}: needs at least one defined tensor", op.qualified);
      return l->front()->mesh;
    }
    COX_CHECK_ARG(!std::holds_alternative<Access::ArgNone>(Access::value(a)), "{}: the input tensor is undefined", op.qualified);
  }
  throw InvalidArgument(fmt::format("{}: no tensor argument to take the mesh from", op.qualified));
}

// For the typed ops (src/ops/ops.def): the op runs on its tensors' mesh.
Tensor op1(const OpInfo& op, std::initializer_list<Arg> args) { return op1(mesh_of(op, args), op, args); }

// The same, for an op with two outputs.
std::pair<Tensor, Tensor> op2(const OpInfo& op, std::initializer_list<Arg> args) {
  const DeviceMesh& mesh = mesh_of(op, args);
  auto outs = engine_of(mesh)->call(mesh, op, args.begin(), args.size());
  COX_INTERNAL_ASSERT(outs.size() == 2, "{} returned {} tensors, not 2", op.qualified, outs.size());
  return {std::move(outs[0]), std::move(outs[1])};
}

Arg dtype_arg(const TensorOptions& o) { return o.dtype ? Arg(*o.dtype) : Arg(std::nullopt); }

Tensor finish_creation(Tensor t, const TensorOptions& o) {
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------
// DeviceMesh

DeviceMesh::DeviceMesh(std::shared_ptr<Engine> engine, std::shared_ptr<const MeshInfo> info)
    : engine_(std::move(engine)), info_(std::move(info)) {}

const Shape& DeviceMesh::shape() const noexcept { return info_->shape; }
DeviceMesh DeviceMesh::with(Shape s) const { return DeviceMesh(engine_, make_info(std::move(s))); }
DeviceMesh DeviceMesh::slice(std::string_view dim, int64_t index) const { return with(shape().slice(dim, index)); }
DeviceMesh DeviceMesh::slice(std::string_view dim, int64_t begin, int64_t end, int64_t step) const {
  return with(shape().slice(dim, begin, end, step));
}
DeviceMesh DeviceMesh::slice(const NamedCoord& indices) const { return with(shape().slice(indices)); }
DeviceMesh DeviceMesh::split(std::string_view dim, const std::vector<std::string>& names,
                             const std::vector<int64_t>& sizes) const {
  return with(shape().split(dim, names, sizes));
}
DeviceMesh DeviceMesh::rename(std::string_view from, std::string_view to) const { return with(shape().rename(from, to)); }
DeviceMesh DeviceMesh::flatten(std::string_view name) const { return with(shape().flatten(name)); }
DeviceMesh DeviceMesh::transpose(std::string_view a, std::string_view b) const { return with(shape().transpose(a, b)); }
DeviceMesh DeviceMesh::permute(const std::vector<std::string>& order) const { return with(shape().permute(order)); }
void DeviceMesh::sync(std::optional<std::chrono::milliseconds> timeout) const { engine_->sync(*this, timeout); }
void DeviceMesh::manual_seed(uint64_t seed, bool per_rank) const { engine_->seed(*this, seed, per_rank); }
void DeviceMesh::load_library(const std::string& path) const { engine_->load_library(*this, path); }
int64_t DeviceMesh::live_tensors(const NamedCoord& coord) const {
  return engine_->live_tensors(static_cast<int>(shape().rank_of(coord)));
}
bool DeviceMesh::operator==(const DeviceMesh& o) const noexcept {
  return engine_ == o.engine_ && (info_ == o.info_ || info_->shape == o.info_->shape);
}

DeviceMesh Controller::mesh(const std::vector<std::pair<std::string, int64_t>>& dims) {
  Shape s(dims);
  COX_CHECK_ARG(s.size() == size(), "mesh {} has {} ranks but the controller has {} workers", s.to_string(), s.size(),
                size());
  return Access::mesh(Engine::of(runtime::of(*this)), make_info(std::move(s)));
}

// ---------------------------------------------------------------------------
// Futures

TensorFuture::TensorFuture(std::shared_ptr<Engine> engine, uint64_t request, int rank)
    : engine_(std::move(engine)), request_(request), rank_(rank) {}

TensorFuture::TensorFuture(TensorFuture&& other) noexcept
    : engine_(std::move(other.engine_)), request_(other.request_), rank_(other.rank_), answered_(other.answered_),
      value_(std::move(other.value_)) {
  other.engine_ = nullptr;
}

TensorFuture& TensorFuture::operator=(TensorFuture&& other) noexcept {
  if (this != &other) {
    release();
    engine_ = std::move(other.engine_);
    request_ = other.request_;
    rank_ = other.rank_;
    answered_ = other.answered_;
    value_ = std::move(other.value_);
    other.engine_ = nullptr;
  }
  return *this;
}

TensorFuture::~TensorFuture() { release(); }

void TensorFuture::release() noexcept {
  if (engine_ && !answered_) engine_->forget_fetch(rank_, request_);
  engine_ = nullptr;
}

at::Tensor TensorFuture::get(std::optional<std::chrono::milliseconds> timeout) {
  if (value_) return *value_;
  COX_CHECK_ARG(engine_ != nullptr, "get(): this TensorFuture was moved from");
  try {
    value_ = engine_->wait_fetch(rank_, request_, timeout);
  } catch (const Timeout&) {
    throw;  // the reply may still come: a later get() can take it
  } catch (...) {
    answered_ = true;
    throw;
  }
  answered_ = true;
  return *value_;
}

// ---------------------------------------------------------------------------
// Tensor

Arg::Arg(const Tensor& t) : v_(t.defined() ? Value(Access::impl(t)) : Value(None{})) {}
Arg::Arg(std::vector<Tensor> ts) {
  std::vector<std::shared_ptr<TensorImpl>> impls;
  impls.reserve(ts.size());
  for (auto& t : ts) impls.push_back(Access::impl(t));
  v_ = std::move(impls);
}

const TensorImpl& Tensor::checked() const {
  COX_CHECK_ARG(impl_ != nullptr, "use of an undefined cox::Tensor");
  return *impl_;
}

const DeviceMesh& Tensor::mesh() const { return checked().mesh; }
std::vector<int64_t> Tensor::sizes() const {
  checked();
  const auto& m = impl_->meta();
  return {m.sizes.begin(), m.sizes.end()};
}
int64_t Tensor::dim() const {
  checked();
  return static_cast<int64_t>(impl_->meta().sizes.size());
}
int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  COX_CHECK_ARG(d >= -n && d < n, "size({}): dimension out of range for a {}-d tensor", d, n);
  return impl_->meta().sizes[static_cast<size_t>(d < 0 ? d + n : d)];
}
int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : sizes()) n *= s;
  return n;
}
at::ScalarType Tensor::dtype() const {
  checked();
  return impl_->meta().dtype;
}
bool Tensor::requires_grad() const { return checked().requires_grad; }
at::Tensor Tensor::meta() const {
  checked();
  return impl_->meta().to_meta_tensor();
}

TensorFuture Tensor::fetch(const NamedCoord& coord) const {
  const int rank = static_cast<int>(mesh().shape().rank_of(coord));
  return Access::future(engine_of(mesh()), engine_of(mesh())->fetch(rank, impl_->id), rank);
}
TensorFuture Tensor::fetch(const Coord& coord) const {
  const int rank = static_cast<int>(mesh().shape().rank_of(coord));
  return Access::future(engine_of(mesh()), engine_of(mesh())->fetch(rank, impl_->id), rank);
}
std::vector<at::Tensor> Tensor::fetch_all(std::optional<std::chrono::milliseconds> timeout) const {
  std::vector<TensorFuture> futures;
  for (int rank : info_of(mesh())->ranks) {
    futures.push_back(Access::future(engine_of(mesh()), engine_of(mesh())->fetch(rank, checked().id), rank));
  }
  std::vector<at::Tensor> out;
  for (auto& f : futures) out.push_back(f.get(timeout));
  return out;
}

template <class T>
T Tensor::item() const {
  const int rank = info_of(mesh())->ranks.front();
  at::Tensor v = Access::future(engine_of(mesh()), engine_of(mesh())->fetch(rank, checked().id), rank).get();
  COX_CHECK_ARG(v.numel() == 1, "item(): the tensor has {} elements, not 1", v.numel());
  return v.item<T>();
}
template COX_API float Tensor::item<float>() const;
template COX_API double Tensor::item<double>() const;
template COX_API int64_t Tensor::item<int64_t>() const;
template COX_API bool Tensor::item<bool>() const;

void Tensor::backward(const Tensor& grad) const { engine_of(mesh())->backward(*this, grad); }
Tensor Tensor::grad() const { return engine_of(mesh())->grad(*this); }
// The typed ops, generated from the op table src/ops/ops.def.
#include "generated/tensor_ops.inc"

Tensor operator+(const Tensor& a, const Tensor& b) { return a.add(b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return a.sub(b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return a.mul(b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return a.div(b); }
Tensor operator+(const Tensor& a, double b) { return a.add(b); }
Tensor operator-(const Tensor& a, double b) { return a.add(-b); }
Tensor operator*(const Tensor& a, double b) { return a.mul(b); }
Tensor operator/(const Tensor& a, double b) { return a.mul(1.0 / b); }
Tensor operator*(double a, const Tensor& b) { return b.mul(a); }
Tensor operator-(const Tensor& a) { return a.neg(); }

// ---------------------------------------------------------------------------
// Generic ops, creation, functional ops

std::vector<Tensor> call_op(const DeviceMesh& mesh, const std::string& name, const std::string& overload,
                            const std::vector<Arg>& args) {
  return engine_of(mesh)->call(mesh, intern_op(name, overload), args.data(), args.size());
}

std::vector<Tensor> call_op(const std::string& name, const std::string& overload, const std::vector<Arg>& args) {
  for (const Arg& a : args) {
    const auto& v = Access::value(a);
    if (auto t = std::get_if<std::shared_ptr<TensorImpl>>(&v); t && *t) return call_op((*t)->mesh, name, overload, args);
    if (auto l = std::get_if<std::vector<std::shared_ptr<TensorImpl>>>(&v); l && !l->empty() && l->front()) {
      return call_op(l->front()->mesh, name, overload, args);
    }
  }
  throw InvalidArgument(fmt::format("call_op({}.{}): no tensor argument to take the mesh from; pass the mesh", name,
                                    overload));
}

Tensor zeros(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o) {
  return finish_creation(op1(mesh, COX_OP("aten::zeros", ""), {std::move(sizes), dtype_arg(o)}), o);
}
Tensor ones(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o) {
  return finish_creation(op1(mesh, COX_OP("aten::ones", ""), {std::move(sizes), dtype_arg(o)}), o);
}
Tensor full(const DeviceMesh& mesh, std::vector<int64_t> sizes, double value, TensorOptions o) {
  return finish_creation(
      op1(mesh, COX_OP("aten::full", ""), {std::move(sizes), value, o.dtype ? Arg(*o.dtype) : Arg(at::kFloat)}), o);
}
Tensor empty(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o) {
  return finish_creation(op1(mesh, COX_OP("aten::empty", "memory_format"), {std::move(sizes), dtype_arg(o)}), o);
}
Tensor rand(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o) {
  return finish_creation(op1(mesh, COX_OP("aten::rand", ""), {std::move(sizes), dtype_arg(o)}), o);
}
Tensor randn(const DeviceMesh& mesh, std::vector<int64_t> sizes, TensorOptions o) {
  return finish_creation(op1(mesh, COX_OP("aten::randn", ""), {std::move(sizes), dtype_arg(o)}), o);
}
Tensor arange(const DeviceMesh& mesh, int64_t end, TensorOptions o) {
  return finish_creation(op1(mesh, COX_OP("aten::arange", ""), {end, dtype_arg(o)}), o);
}

Tensor coordinate(const DeviceMesh& mesh, std::string_view dim) {
  const size_t d = mesh.shape().index_of(dim);
  std::vector<at::Tensor> values;
  for (int rank : info_of(mesh)->ranks) values.push_back(at::scalar_tensor(mesh.shape().coord_of(rank)[d], at::kLong));
  return engine_of(mesh)->put(mesh, values, false);
}

Tensor global_rank(const DeviceMesh& mesh) {
  std::vector<at::Tensor> values;
  for (int rank : info_of(mesh)->ranks) values.push_back(at::scalar_tensor(static_cast<int64_t>(rank), at::kLong));
  return engine_of(mesh)->put(mesh, values, false);
}

Tensor mesh_rank(const DeviceMesh& mesh) {
  // info()->ranks lists the mesh's workers in row-major order of its
  // coordinates: the position in it is the rank within the mesh.
  std::vector<at::Tensor> values;
  const auto n = static_cast<int64_t>(info_of(mesh)->ranks.size());
  for (int64_t i = 0; i < n; ++i) values.push_back(at::scalar_tensor(i, at::kLong));
  return engine_of(mesh)->put(mesh, values, false);
}

Tensor from_local(const DeviceMesh& mesh, const at::Tensor& value, bool requires_grad) {
  COX_CHECK_ARG(value.defined(), "from_local: the tensor is undefined");
  return engine_of(mesh)->put(mesh, {value}, requires_grad);
}

Tensor scatter(const DeviceMesh& mesh, const at::Tensor& value, int64_t tensor_dim, std::string_view mesh_dim) {
  COX_CHECK_ARG(value.defined(), "scatter: the tensor is undefined");
  const int64_t nd = value.dim();
  COX_CHECK_ARG(tensor_dim >= -nd && tensor_dim < nd, "scatter: tensor_dim {} out of range for a {}-d tensor",
                tensor_dim, nd);
  if (tensor_dim < 0) tensor_dim += nd;
  const size_t d = mesh.shape().index_of(mesh_dim);
  const int64_t parts = mesh.shape().sizes()[d];
  COX_CHECK_ARG(value.size(tensor_dim) % parts == 0,
                "scatter: size {} of tensor dim {} is not divisible by the {} workers along mesh dim '{}'",
                value.size(tensor_dim), tensor_dim, parts, mesh_dim);
  auto chunks = value.chunk(parts, tensor_dim);
  std::vector<at::Tensor> values;
  for (int rank : info_of(mesh)->ranks) values.push_back(chunks[static_cast<size_t>(mesh.shape().coord_of(rank)[d])]);
  return engine_of(mesh)->put(mesh, values, false);
}

NoGradGuard::NoGradGuard(const DeviceMesh& mesh) : mesh_(mesh), previous_(engine_of(mesh)->set_grad_mode(false)) {}
NoGradGuard::~NoGradGuard() {
  try {
    engine_of(mesh_)->set_grad_mode(previous_);
  } catch (...) {
  }
}

std::vector<Tensor> call_remote(const DeviceMesh& mesh, const std::string& name, const std::vector<Tensor>& inputs,
                                const std::vector<double>& scalars) {
  return engine_of(mesh)->call_remote(mesh, name, inputs, scalars);
}

}  // namespace cox
