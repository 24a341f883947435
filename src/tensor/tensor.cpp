// The public tensor API: meshes, handles, typed ops, creation, fetch.
#include <cox/tensor.hpp>

#include "common/check.hpp"
#include "tensor/engine.hpp"

#include <ATen/ATen.h>

namespace cox {

using tensor::Engine;
using tensor::intern_op;
using tensor::MeshInfo;
using tensor::OpInfo;
using tensor::TensorImpl;

namespace {

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
  return first(mesh.engine()->call(mesh, op, args.begin(), args.size()));
}

// For ops whose first argument is a tensor: the op runs on its mesh.
Tensor op1(const OpInfo& op, std::initializer_list<Arg> args) {
  const auto* t = std::get_if<std::shared_ptr<TensorImpl>>(&args.begin()->value());
  COX_CHECK_ARG(t && *t, "{}: the input tensor is undefined", op.qualified);
  return op1((*t)->mesh, op, args);
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
  return DeviceMesh(impl_->engine(), make_info(std::move(s)));
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

Arg::Arg(const Tensor& t) : v_(t.defined() ? Value(t.impl()) : Value(None{})) {}
Arg::Arg(std::vector<Tensor> ts) {
  std::vector<std::shared_ptr<TensorImpl>> impls;
  impls.reserve(ts.size());
  for (auto& t : ts) impls.push_back(t.impl());
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
  return TensorFuture(mesh().engine(), mesh().engine()->fetch(rank, impl_->id), rank);
}
TensorFuture Tensor::fetch(const Coord& coord) const {
  const int rank = static_cast<int>(mesh().shape().rank_of(coord));
  return TensorFuture(mesh().engine(), mesh().engine()->fetch(rank, impl_->id), rank);
}
std::vector<at::Tensor> Tensor::fetch_all(std::optional<std::chrono::milliseconds> timeout) const {
  std::vector<TensorFuture> futures;
  for (int rank : mesh().info()->ranks) {
    futures.emplace_back(mesh().engine(), mesh().engine()->fetch(rank, checked().id), rank);
  }
  std::vector<at::Tensor> out;
  for (auto& f : futures) out.push_back(f.get(timeout));
  return out;
}

template <class T>
T Tensor::item() const {
  const int rank = mesh().info()->ranks.front();
  at::Tensor v = TensorFuture(mesh().engine(), mesh().engine()->fetch(rank, checked().id), rank).get();
  COX_CHECK_ARG(v.numel() == 1, "item(): the tensor has {} elements, not 1", v.numel());
  return v.item<T>();
}
template COX_API float Tensor::item<float>() const;
template COX_API double Tensor::item<double>() const;
template COX_API int64_t Tensor::item<int64_t>() const;
template COX_API bool Tensor::item<bool>() const;

void Tensor::backward(const Tensor& grad) const { mesh().engine()->backward(*this, grad); }
Tensor Tensor::grad() const { return mesh().engine()->grad(*this); }
Tensor& Tensor::requires_grad_(bool enabled) {
  op1(COX_OP("aten::requires_grad_", ""), {*this, enabled});
  return *this;
}
Tensor Tensor::detach() const { return op1(COX_OP("aten::detach", ""), {*this}); }

Tensor Tensor::add(const Tensor& o, double alpha) const { return op1(COX_OP("aten::add", "Tensor"), {*this, o, scalar_arg(alpha)}); }
Tensor Tensor::sub(const Tensor& o, double alpha) const { return op1(COX_OP("aten::sub", "Tensor"), {*this, o, scalar_arg(alpha)}); }
Tensor Tensor::mul(const Tensor& o) const { return op1(COX_OP("aten::mul", "Tensor"), {*this, o}); }
Tensor Tensor::div(const Tensor& o) const { return op1(COX_OP("aten::div", "Tensor"), {*this, o}); }
Tensor Tensor::add(double s) const { return op1(COX_OP("aten::add", "Scalar"), {*this, s}); }
Tensor Tensor::mul(double s) const { return op1(COX_OP("aten::mul", "Scalar"), {*this, s}); }
Tensor Tensor::pow(double e) const { return op1(COX_OP("aten::pow", "Tensor_Scalar"), {*this, e}); }
Tensor Tensor::neg() const { return op1(COX_OP("aten::neg", ""), {*this}); }
Tensor Tensor::exp() const { return op1(COX_OP("aten::exp", ""), {*this}); }
Tensor Tensor::log() const { return op1(COX_OP("aten::log", ""), {*this}); }
Tensor Tensor::sqrt() const { return op1(COX_OP("aten::sqrt", ""), {*this}); }
Tensor Tensor::abs() const { return op1(COX_OP("aten::abs", ""), {*this}); }
Tensor Tensor::matmul(const Tensor& o) const { return op1(COX_OP("aten::matmul", ""), {*this, o}); }
Tensor Tensor::mm(const Tensor& o) const { return op1(COX_OP("aten::mm", ""), {*this, o}); }
Tensor Tensor::bmm(const Tensor& o) const { return op1(COX_OP("aten::bmm", ""), {*this, o}); }
Tensor Tensor::sum() const { return op1(COX_OP("aten::sum", ""), {*this}); }
Tensor Tensor::sum(std::vector<int64_t> dims, bool keepdim) const {
  return op1(COX_OP("aten::sum", "dim_IntList"), {*this, std::move(dims), keepdim});
}
Tensor Tensor::mean() const { return op1(COX_OP("aten::mean", ""), {*this}); }
Tensor Tensor::mean(std::vector<int64_t> dims, bool keepdim) const {
  return op1(COX_OP("aten::mean", "dim"), {*this, std::move(dims), keepdim});
}
Tensor Tensor::max() const { return op1(COX_OP("aten::max", ""), {*this}); }
std::pair<Tensor, Tensor> Tensor::max(int64_t dim, bool keepdim) const {
  std::initializer_list<Arg> args = {*this, dim, keepdim};
  auto outs = mesh().engine()->call(mesh(), COX_OP("aten::max", "dim"), args.begin(), args.size());
  return {outs.at(0), outs.at(1)};
}
Tensor Tensor::argmax(int64_t dim, bool keepdim) const { return op1(COX_OP("aten::argmax", ""), {*this, dim, keepdim}); }
Tensor Tensor::view(std::vector<int64_t> sizes) const { return op1(COX_OP("aten::view", ""), {*this, std::move(sizes)}); }
Tensor Tensor::reshape(std::vector<int64_t> sizes) const {
  return op1(COX_OP("aten::reshape", ""), {*this, std::move(sizes)});
}
Tensor Tensor::transpose(int64_t a, int64_t b) const { return op1(COX_OP("aten::transpose", "int"), {*this, a, b}); }
Tensor Tensor::t() const { return op1(COX_OP("aten::t", ""), {*this}); }
Tensor Tensor::permute(std::vector<int64_t> dims) const {
  return op1(COX_OP("aten::permute", ""), {*this, std::move(dims)});
}
Tensor Tensor::contiguous() const { return op1(COX_OP("aten::contiguous", ""), {*this}); }
Tensor Tensor::narrow(int64_t dim, int64_t start, int64_t length) const {
  return op1(COX_OP("aten::narrow", ""), {*this, dim, start, length});
}
Tensor Tensor::slice(int64_t dim, int64_t start, int64_t end, int64_t step) const {
  return op1(COX_OP("aten::slice", "Tensor"), {*this, dim, start, end, step});
}
Tensor Tensor::select(int64_t dim, int64_t index) const { return op1(COX_OP("aten::select", "int"), {*this, dim, index}); }
Tensor Tensor::unsqueeze(int64_t dim) const { return op1(COX_OP("aten::unsqueeze", ""), {*this, dim}); }
Tensor Tensor::squeeze(int64_t dim) const { return op1(COX_OP("aten::squeeze", "dim"), {*this, dim}); }
Tensor Tensor::index_select(int64_t dim, const Tensor& index) const {
  return op1(COX_OP("aten::index_select", ""), {*this, dim, index});
}
Tensor Tensor::to(at::ScalarType dtype) const { return op1(COX_OP("aten::to", "dtype"), {*this, dtype}); }
Tensor Tensor::clone() const { return op1(COX_OP("aten::clone", ""), {*this}); }

Tensor& Tensor::add_(const Tensor& o, double alpha) {
  op1(COX_OP("aten::add_", "Tensor"), {*this, o, scalar_arg(alpha)});
  return *this;
}
Tensor& Tensor::add_(double s) {
  op1(COX_OP("aten::add_", "Scalar"), {*this, s});
  return *this;
}
Tensor& Tensor::sub_(const Tensor& o, double alpha) {
  op1(COX_OP("aten::sub_", "Tensor"), {*this, o, scalar_arg(alpha)});
  return *this;
}
Tensor& Tensor::mul_(const Tensor& o) {
  op1(COX_OP("aten::mul_", "Tensor"), {*this, o});
  return *this;
}
Tensor& Tensor::mul_(double s) {
  op1(COX_OP("aten::mul_", "Scalar"), {*this, s});
  return *this;
}
Tensor& Tensor::div_(double s) {
  op1(COX_OP("aten::div_", "Scalar"), {*this, s});
  return *this;
}
Tensor& Tensor::zero_() {
  op1(COX_OP("aten::zero_", ""), {*this});
  return *this;
}
Tensor& Tensor::fill_(double v) {
  op1(COX_OP("aten::fill_", "Scalar"), {*this, v});
  return *this;
}
Tensor& Tensor::copy_(const Tensor& src) {
  op1(COX_OP("aten::copy_", ""), {*this, src});
  return *this;
}

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
  return mesh.engine()->call(mesh, intern_op(name, overload), args.data(), args.size());
}

std::vector<Tensor> call_op(const std::string& name, const std::string& overload, const std::vector<Arg>& args) {
  for (const Arg& a : args) {
    if (auto t = std::get_if<std::shared_ptr<TensorImpl>>(&a.value()); t && *t) return call_op((*t)->mesh, name, overload, args);
    if (auto l = std::get_if<std::vector<std::shared_ptr<TensorImpl>>>(&a.value()); l && !l->empty() && l->front()) {
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
  for (int rank : mesh.info()->ranks) values.push_back(at::scalar_tensor(mesh.shape().coord_of(rank)[d], at::kLong));
  return mesh.engine()->put(mesh, values, false);
}

Tensor global_rank(const DeviceMesh& mesh) {
  std::vector<at::Tensor> values;
  for (int rank : mesh.info()->ranks) values.push_back(at::scalar_tensor(static_cast<int64_t>(rank), at::kLong));
  return mesh.engine()->put(mesh, values, false);
}

Tensor mesh_rank(const DeviceMesh& mesh) {
  // info()->ranks lists the mesh's workers in row-major order of its
  // coordinates: the position in it is the rank within the mesh.
  std::vector<at::Tensor> values;
  const auto n = static_cast<int64_t>(mesh.info()->ranks.size());
  for (int64_t i = 0; i < n; ++i) values.push_back(at::scalar_tensor(i, at::kLong));
  return mesh.engine()->put(mesh, values, false);
}

Tensor from_local(const DeviceMesh& mesh, const at::Tensor& value, bool requires_grad) {
  COX_CHECK_ARG(value.defined(), "from_local: the tensor is undefined");
  return mesh.engine()->put(mesh, {value}, requires_grad);
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
  for (int rank : mesh.info()->ranks) values.push_back(chunks[static_cast<size_t>(mesh.shape().coord_of(rank)[d])]);
  return mesh.engine()->put(mesh, values, false);
}

Tensor relu(const Tensor& x) { return op1(COX_OP("aten::relu", ""), {x}); }
Tensor gelu(const Tensor& x) { return op1(COX_OP("aten::gelu", ""), {x}); }
Tensor silu(const Tensor& x) { return op1(COX_OP("aten::silu", ""), {x}); }
Tensor tanh(const Tensor& x) { return op1(COX_OP("aten::tanh", ""), {x}); }
Tensor sigmoid(const Tensor& x) { return op1(COX_OP("aten::sigmoid", ""), {x}); }
Tensor softmax(const Tensor& x, int64_t dim) { return op1(COX_OP("aten::softmax", "int"), {x, dim}); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return op1(COX_OP("aten::log_softmax", "int"), {x, dim}); }
Tensor cat(const std::vector<Tensor>& ts, int64_t dim) {
  COX_CHECK_ARG(!ts.empty() && ts.front().defined(), "cat: needs at least one defined tensor");
  return op1(ts.front().mesh(), COX_OP("aten::cat", ""), {ts, dim});
}
Tensor stack(const std::vector<Tensor>& ts, int64_t dim) {
  COX_CHECK_ARG(!ts.empty() && ts.front().defined(), "stack: needs at least one defined tensor");
  return op1(ts.front().mesh(), COX_OP("aten::stack", ""), {ts, dim});
}
Tensor embedding(const Tensor& weight, const Tensor& indices) {
  return op1(COX_OP("aten::embedding", ""), {weight, indices});
}
Tensor layer_norm(const Tensor& x, std::vector<int64_t> normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  return op1(COX_OP("aten::layer_norm", ""), {x, std::move(normalized_shape), weight, bias, eps});
}
Tensor dropout(const Tensor& x, double p, bool train) { return op1(COX_OP("aten::dropout", ""), {x, p, train}); }
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  return op1(COX_OP("aten::linear", ""), {x, weight, bias});
}
Tensor cross_entropy(const Tensor& logits, const Tensor& target) {
  return op1(COX_OP("aten::cross_entropy_loss", ""), {logits, target});
}
Tensor nll_loss(const Tensor& log_probs, const Tensor& target) {
  return op1(COX_OP("aten::nll_loss", ""), {log_probs, target});
}
Tensor mse_loss(const Tensor& x, const Tensor& target) { return op1(COX_OP("aten::mse_loss", ""), {x, target}); }

NoGradGuard::NoGradGuard(const DeviceMesh& mesh) : mesh_(mesh), previous_(mesh.engine()->set_grad_mode(false)) {}
NoGradGuard::~NoGradGuard() {
  try {
    mesh_.engine()->set_grad_mode(previous_);
  } catch (...) {
  }
}

std::vector<Tensor> call_remote(const DeviceMesh& mesh, const std::string& name, const std::vector<Tensor>& inputs,
                                const std::vector<double>& scalars) {
  return mesh.engine()->call_remote(mesh, name, inputs, scalars);
}

}  // namespace cox
