// Collectives and transfers on the controller: groups and communicators,
// checks at the call site, result metadata, and the messages to the workers.
#include <cox/collectives.hpp>

#include "common/access.hpp"
#include "common/check.hpp"
#include "tensor/engine.hpp"

#include <ATen/ATen.h>

namespace cox {
namespace tensor {

using detail::Access;

namespace {

Meta contiguous_meta(at::ScalarType dtype, const c10::SmallVector<int64_t, 6>& sizes) {
  Meta m;
  m.dtype = dtype;
  m.sizes = sizes;
  m.strides.resize(sizes.size());
  int64_t stride = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    m.strides[i] = stride;
    stride *= std::max<int64_t>(sizes[i], 1);
  }
  return m;
}

bool collective_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
    case at::kLong:
    case at::kInt:
    case at::kChar:
    case at::kByte:
      return true;
    default:
      return false;
  }
}

std::string dims_string(const std::vector<std::string>& dims) {
  return dims.empty() ? std::string("all dims") : fmt::format("dims [{}]", fmt::join(dims, ", "));
}

}  // namespace

Tensor Engine::collective(const Tensor& t, const std::vector<std::string>& dims, wire::Collective proto,
                          const std::optional<Meta>& out) {
  const auto& in_impl = Access::impl(t);
  const Meta& in = in_impl->meta();
  std::shared_ptr<TensorImpl> result;
  if (out) {
    result = std::make_shared<TensorImpl>(t.mesh(), new_tensor_id());
    result->set_known(*out);
    proto.out = result->id;
  }
  proto.in = in_impl->id;
  proto.dtype = static_cast<uint8_t>(in.dtype);
  proto.sizes.assign(in.sizes.begin(), in.sizes.end());
  rt().make_room(Access::info(t.mesh())->ranks, "sending work");
  // One global order of collectives (and of their communicators' set-up):
  // any two workers meet the collectives they share in the same order.
  std::lock_guard<std::mutex> lk(order_mu_);
  runtime::Runtime& rt = this->rt();
  const CommRegistry::Groups& g = comms_.groups(rt, t.mesh().shape(), dims);
  std::vector<uint8_t> frame;
  for (size_t i = 0; i < g.members.size(); ++i) {
    proto.comm = g.comms[i];
    // comm 0: a group of one, where the result is a copy of the input.
    if (proto.comm == 0 && !out) continue;
    frame.clear();
    wire::encode_frame(proto, frame);
    send_all(rt, g.members[i], frame);
  }
  return result ? Access::tensor(std::move(result)) : t;
}

void Engine::barrier(const DeviceMesh& mesh, const std::vector<std::string>& dims) {
  rt().make_room(Access::info(mesh)->ranks, "sending work");
  std::lock_guard<std::mutex> lk(order_mu_);
  runtime::Runtime& rt = this->rt();
  const CommRegistry::Groups& g = comms_.groups(rt, mesh.shape(), dims);
  wire::Collective proto;
  proto.kind = wire::CollectiveKind::kBarrier;
  for (size_t i = 0; i < g.members.size(); ++i) {
    if (g.comms[i] == 0) continue;
    proto.comm = g.comms[i];
    send_all(rt, g.members[i], wire::encode_frame(proto));
  }
}

Tensor Engine::transfer(const Tensor& t, const DeviceMesh& dst, const std::vector<int64_t>& sources) {
  const DeviceMesh& src_mesh = t.mesh();
  COX_CHECK_ARG(Access::engine(dst) == Access::engine(src_mesh),
                "send_recv: the destination mesh belongs to another controller");
  const auto& src_ranks = Access::info(src_mesh)->ranks;
  const auto& dst_ranks = Access::info(dst)->ranks;
  COX_CHECK_ARG(sources.size() == dst_ranks.size(), "send_recv: {} sources for a destination mesh {} of {} workers",
                sources.size(), dst.shape().to_string(), dst_ranks.size());
  for (size_t j = 0; j < sources.size(); ++j) {
    COX_CHECK_ARG(sources[j] >= 0 && sources[j] < static_cast<int64_t>(src_ranks.size()),
                  "send_recv: source {} (for destination {}) is outside the source mesh {} of {} workers", sources[j],
                  j, src_mesh.shape().to_string(), src_ranks.size());
  }
  const auto& in_impl = Access::impl(t);
  const Meta& in = in_impl->meta();
  COX_CHECK_ARG(collective_dtype(in.dtype) || in.dtype == at::kBool || in.dtype == at::kShort,
                "send_recv: tensors of dtype {} cannot move between workers", c10::toString(in.dtype));

  auto out = std::make_shared<TensorImpl>(dst, new_tensor_id());
  out->set_known(contiguous_meta(in.dtype, in.sizes));
  std::vector<int> involved(src_ranks);
  involved.insert(involved.end(), dst_ranks.begin(), dst_ranks.end());
  rt().make_room(involved, "sending work");

  std::lock_guard<std::mutex> lk(order_mu_);
  runtime::Runtime& rt = this->rt();
  // One message per worker involved, with everything it sends and receives.
  std::map<int, wire::Transfer> msgs;
  const uint64_t tag = next_transfer_++;
  auto msg = [&](int rank) -> wire::Transfer& {
    auto [it, fresh] = msgs.try_emplace(rank);
    if (fresh) {
      it->second.tag = tag;
      it->second.dtype = static_cast<uint8_t>(in.dtype);
      it->second.sizes.assign(in.sizes.begin(), in.sizes.end());
    }
    return it->second;
  };
  for (size_t j = 0; j < sources.size(); ++j) {
    const int from = src_ranks[static_cast<size_t>(sources[j])];
    const int to = dst_ranks[j];
    wire::Transfer& s = msg(from);
    s.src = in_impl->id;
    wire::Transfer& r = msg(to);
    r.out = out->id;
    if (from == to) continue;  // recv_comm 0: the worker keeps its own shard
    const std::vector<int> pair{std::min(from, to), std::max(from, to)};
    const uint64_t comm = comms_.comms_for(rt, {pair})[0];
    s.sends.push_back({comm, to == pair[0] ? 0 : 1});
    r.recv_comm = comm;
    r.recv_peer = from == pair[0] ? 0 : 1;
  }
  std::vector<std::vector<uint8_t>> frames;
  std::vector<runtime::Runtime::Send> sends;
  frames.reserve(msgs.size());
  for (auto& [rank, m] : msgs) frames.push_back(wire::encode_frame(m));
  size_t i = 0;
  for (auto& [rank, m] : msgs) {
    sends.push_back({rank, frames[i].data(), frames[i].size()});
    ++i;
  }
  rt.send(sends.data(), sends.size());
  return Access::tensor(std::move(out));
}

}  // namespace tensor

// ---------------------------------------------------------------------------
// The public functions

// The groups the collectives form (tensor::group_members, which the
// communicator registry uses too), asked without setting anything up.
std::vector<std::vector<int64_t>> DeviceMesh::groups(const std::vector<std::string>& dims) const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& g : tensor::group_members(shape(), dims)) out.emplace_back(g.begin(), g.end());
  return out;
}

using detail::Access;

namespace {

using tensor::Meta;

const tensor::TensorImpl& checked(const Tensor& t, const char* what) {
  COX_CHECK_ARG(t.defined(), "{}: the tensor is undefined", what);
  return *Access::impl(t);
}

int64_t group_size(const Tensor& t, const Dims& dims) {
  const Shape& s = t.mesh().shape();
  int64_t n = 1;
  if (dims.empty()) return s.size();
  for (const auto& d : dims) {
    COX_CHECK_ARG(s.has_dim(d), "mesh {} has no dim '{}'", s.to_string(), d);
    n *= s.size(d);
  }
  return n;
}

const Meta& checked_meta(const Tensor& t, const char* what) {
  const Meta& m = Access::impl(t)->meta();
  COX_CHECK_ARG(tensor::collective_dtype(m.dtype), "{}: tensors of dtype {} are not supported by collectives", what,
                c10::toString(m.dtype));
  return m;
}

int64_t wrap_dim(int64_t dim, size_t ndim, const char* what, const char* arg) {
  const auto n = static_cast<int64_t>(ndim);
  COX_CHECK_ARG(n > 0, "{}: a 0-d tensor has no dim {} ({})", what, dim, arg);
  COX_CHECK_ARG(dim >= -n && dim < n, "{}: {} {} is out of range for a tensor of {} dims", what, arg, dim, n);
  return dim < 0 ? dim + n : dim;
}

wire::Collective proto(wire::CollectiveKind kind, Reduce op) {
  COX_CHECK_ARG(static_cast<uint8_t>(op) <= 4, "unknown Reduce value {}", static_cast<int>(op));
  wire::Collective c;
  c.kind = kind;
  c.reduce = static_cast<uint8_t>(op);
  return c;
}

}  // namespace

Tensor all_reduce(const Tensor& t, const Dims& dims, Reduce op) {
  checked(t, "all_reduce");
  const Meta& m = checked_meta(t, "all_reduce");
  group_size(t, dims);
  auto c = proto(wire::CollectiveKind::kAllReduce, op);
  return Access::engine(t.mesh())->collective(t, dims, c, tensor::contiguous_meta(m.dtype, m.sizes));
}

Tensor& all_reduce_(Tensor& t, const Dims& dims, Reduce op) {
  checked(t, "all_reduce_");
  checked_meta(t, "all_reduce_");
  group_size(t, dims);
  Access::engine(t.mesh())->collective(t, dims, proto(wire::CollectiveKind::kAllReduce, op), std::nullopt);
  return t;
}

Tensor reduce_scatter(const Tensor& t, const Dims& dims, Reduce op, int64_t dim) {
  checked(t, "reduce_scatter");
  const Meta& m = checked_meta(t, "reduce_scatter");
  const int64_t n = group_size(t, dims);
  const int64_t d = wrap_dim(dim, m.sizes.size(), "reduce_scatter", "dim");
  COX_CHECK_ARG(m.sizes[d] % n == 0,
                "reduce_scatter over {} of mesh {}: dim {} of the {} tensor has size {}, which the group size {} does "
                "not divide",
                tensor::dims_string(dims), t.mesh().shape().to_string(), d, m.to_string(), m.sizes[d], n);
  auto sizes = m.sizes;
  sizes[d] /= n;
  auto c = proto(wire::CollectiveKind::kReduceScatter, op);
  c.a = d;
  return Access::engine(t.mesh())->collective(t, dims, c, tensor::contiguous_meta(m.dtype, sizes));
}

Tensor all_gather(const Tensor& t, const Dims& dims, int64_t dim) {
  checked(t, "all_gather");
  const Meta& m = checked_meta(t, "all_gather");
  const int64_t n = group_size(t, dims);
  const int64_t d = wrap_dim(dim, m.sizes.size(), "all_gather", "dim");
  auto sizes = m.sizes;
  sizes[d] *= n;
  auto c = proto(wire::CollectiveKind::kAllGather, Reduce::Sum);
  c.a = d;
  return Access::engine(t.mesh())->collective(t, dims, c, tensor::contiguous_meta(m.dtype, sizes));
}

Tensor all_to_all(const Tensor& t, const Dims& dims, int64_t split_dim, int64_t concat_dim) {
  checked(t, "all_to_all");
  const Meta& m = checked_meta(t, "all_to_all");
  const int64_t n = group_size(t, dims);
  const int64_t s = wrap_dim(split_dim, m.sizes.size(), "all_to_all", "split_dim");
  const int64_t k = wrap_dim(concat_dim, m.sizes.size(), "all_to_all", "concat_dim");
  COX_CHECK_ARG(m.sizes[s] % n == 0,
                "all_to_all over {} of mesh {}: split dim {} of the {} tensor has size {}, which the group size {} "
                "does not divide",
                tensor::dims_string(dims), t.mesh().shape().to_string(), s, m.to_string(), m.sizes[s], n);
  auto sizes = m.sizes;
  sizes[s] /= n;
  sizes[k] *= n;
  auto c = proto(wire::CollectiveKind::kAllToAll, Reduce::Sum);
  c.a = s;
  c.b = k;
  return Access::engine(t.mesh())->collective(t, dims, c, tensor::contiguous_meta(m.dtype, sizes));
}

Tensor broadcast(const Tensor& t, const Dims& dims, int64_t root) {
  checked(t, "broadcast");
  const Meta& m = checked_meta(t, "broadcast");
  const int64_t n = group_size(t, dims);
  COX_CHECK_ARG(root >= 0 && root < n, "broadcast over {} of mesh {}: root {} is not a member index (groups of {})",
                tensor::dims_string(dims), t.mesh().shape().to_string(), root, n);
  auto c = proto(wire::CollectiveKind::kBroadcast, Reduce::Sum);
  c.a = root;
  return Access::engine(t.mesh())->collective(t, dims, c, tensor::contiguous_meta(m.dtype, m.sizes));
}

void barrier(const DeviceMesh& mesh, const Dims& dims) {
  COX_CHECK_ARG(Access::engine(mesh) != nullptr, "barrier: the mesh has no controller");
  Access::engine(mesh)->barrier(mesh, dims);
}

Tensor send_recv(const Tensor& t, const DeviceMesh& dst, const std::vector<int64_t>& sources) {
  checked(t, "send_recv");
  return Access::engine(t.mesh())->transfer(t, dst, sources);
}

Tensor Tensor::to_mesh(const DeviceMesh& dst) const {
  cox::checked(*this, "to_mesh");
  const Shape& from = mesh().shape();
  const Shape& to = dst.shape();
  COX_CHECK_ARG(from.sizes() == to.sizes(),
                "to_mesh: the destination mesh {} does not match the source mesh {} (dim sizes [{}] vs [{}])",
                to.to_string(), from.to_string(), fmt::join(to.sizes(), ", "), fmt::join(from.sizes(), ", "));
  std::vector<int64_t> sources(static_cast<size_t>(to.size()));
  for (size_t j = 0; j < sources.size(); ++j) sources[j] = static_cast<int64_t>(j);
  return Access::engine(mesh())->transfer(*this, dst, sources);
}

}  // namespace cox
