// The controller's tensor engine.
#include "tensor/engine.hpp"

#include "common/access.hpp"
#include "common/check.hpp"
#include "tensor/op_encoder.hpp"

#include <ATen/ATen.h>

namespace cox::tensor {

using detail::Access;
using wire::Writer;

namespace {
// from_local of at most this many bytes per worker copies them into the
// send queue and returns at once; larger ones are sent from the caller's
// memory and wait until written.
constexpr uint64_t kCopyPutBytes = uint64_t{1} << 20;

const std::vector<int>& ranks_of(const DeviceMesh& mesh) { return Access::info(mesh)->ranks; }

Tensor handle(std::shared_ptr<TensorImpl> t) { return Access::tensor(std::move(t)); }
}  // namespace

// ---------------------------------------------------------------------------
// Handles

PendingMeta::~PendingMeta() {
  if (resolved) return;
  if (auto e = engine.lock()) e->forget_fetch(rank, request);
}

TensorImpl::~TensorImpl() {
  if (const auto& e = Access::engine(mesh)) e->release(id, ranks_of(mesh));
}

const Meta& TensorImpl::meta() {
  if (const Meta* m = known()) return *m;
  std::shared_ptr<PendingMeta> p;
  uint32_t index;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (const Meta* m = known()) return *m;
    p = pending_;
    index = pending_index_;
  }
  COX_INTERNAL_ASSERT(p != nullptr, "tensor {} has neither metadata nor a pending report", id);
  Access::engine(mesh)->resolve(*p);
  Meta m;
  {
    std::lock_guard<std::mutex> lk(p->mu);
    if (!p->error.empty()) {
      Access::engine(mesh)->error_delivered(p->error_value);  // raised here: not again by sync
      throw RemoteError(p->rank, p->error_op, p->error);
    }
    if (index >= p->metas.size()) {
      throw ProtocolError(fmt::format("worker {} reported the metadata of {} outputs; output {} has none", p->rank,
                                      p->metas.size(), index));
    }
    m = p->metas[index];
  }
  std::lock_guard<std::mutex> lk(mu_);
  if (!known()) {
    known_ = std::move(m);
    pending_.reset();
    ready_.store(true, std::memory_order_release);
  }
  return *known_;
}

const Meta* TensorImpl::meta_or_error(std::shared_ptr<PendingMeta>& upstream) {
  if (const Meta* m = known()) return m;
  std::shared_ptr<PendingMeta> p;
  {
    std::lock_guard<std::mutex> lk(mu_);
    p = pending_;
  }
  if (p) {
    Access::engine(mesh)->resolve(*p);
    std::lock_guard<std::mutex> lk(p->mu);
    if (!p->error.empty()) {
      if (!upstream) upstream = p;
      return nullptr;
    }
  }
  return &meta();
}

// ---------------------------------------------------------------------------
// Engine

std::shared_ptr<Engine> Engine::of(runtime::Runtime& rt) {
  return std::static_pointer_cast<Engine>(
      rt.service("cox.tensor.engine", [&rt]() -> std::shared_ptr<runtime::Service> {
        return std::make_shared<Engine>(rt);
      }));
}

void Engine::on_shutdown() noexcept {
  std::lock_guard<std::mutex> lk(order_mu_);  // waits for a send in progress
  rt_.store(nullptr, std::memory_order_release);
  release_.detach();
}

void Engine::define(runtime::Runtime& rt, const OpInfo& op) {
  if (op.id < defined_.size() && defined_[op.id]) return;
  if (defined_.size() <= op.id) defined_.resize(op.id + 1, false);
  wire::DefineOp d;
  d.op = op.id;
  d.name = op.name;
  d.overload = op.overload;
  // Every worker learns every op: sub-meshes change, the table does not.
  send_every_worker(rt, wire::encode_frame(d));
  defined_[op.id] = true;
}

void Engine::send_all(runtime::Runtime& rt, const std::vector<int>& ranks, const std::vector<uint8_t>& frame) {
  c10::SmallVector<runtime::Runtime::Send, 16> sends;
  for (int r : ranks) sends.push_back({r, frame.data(), frame.size()});
  rt.send(sends.data(), sends.size());
}

void Engine::send_every_worker(runtime::Runtime& rt, const std::vector<uint8_t>& frame) {
  for (int r = 0; r < rt.size(); ++r) {
    const runtime::Runtime::Send s{r, frame.data(), frame.size()};
    try {
      rt.send(&s, 1);
    } catch (const WorkerLost&) {
    }
  }
}

std::vector<Tensor> Engine::call(const DeviceMesh& mesh, const OpInfo& op, const Arg* args, size_t nargs) {
  const std::vector<int>& ranks = ranks_of(mesh);
  // Backpressure: wait for room on every worker of the mesh before taking
  // any lock, so that a wait holds up only this thread, and a Timeout
  // leaves no worker with half an op.
  rt().make_room(ranks, "sending work");

  thread_local EncodedOp enc;
  encode_op(mesh, op, args, nargs, enc);

  MetaCache::Entry entry;
  if (enc.upstream) {
    COX_CHECK_ARG(!op.returns_list, "{}: an input is an error value ({} failed: {})", op.qualified,
                  enc.upstream->error_op, enc.upstream->error);
    entry = std::make_shared<const CacheEntry>(learned_entry(op));
  } else if (!(entry = cache_.find(enc.key))) {
    torch::jit::Stack stack = meta_stack(op, args, nargs);
    entry = cache_.insert(enc.key, infer(op, stack, [&] { return describe_args(args, nargs); }));
  }

  // Outputs: ids, in return order; 0 for an input written in place.
  std::vector<Tensor> outs;
  outs.reserve(entry->outs.size());
  std::shared_ptr<PendingMeta> pending = enc.upstream;
  if (!pending && entry->learned) {
    pending = std::make_shared<PendingMeta>();
    pending->engine = weak_from_this();
    pending->request = rt().new_request_id();
    pending->rank = ranks.front();
    pending->cache_key = enc.key;
  }
  Writer w(enc.frame);
  w.put(static_cast<uint32_t>(entry->outs.size()));  // wire::Op::outs
  uint32_t pending_index = 0;
  for (const OutSpec& o : entry->outs) {
    if (o.writes_arg >= 0) {
      w.put<uint64_t>(0);
      outs.push_back(handle(std::get<std::shared_ptr<TensorImpl>>(Access::value(args[o.writes_arg]))));
      continue;
    }
    auto t = std::make_shared<TensorImpl>(mesh, new_tensor_id());
    w.put(t->id);
    if (pending) {
      t->set_pending(pending, pending_index++);
    } else {
      t->set_known(o.meta);
    }
    outs.push_back(handle(std::move(t)));
  }
  const bool ask = pending && !enc.upstream;
  w.put<uint64_t>(ask ? pending->request : 0);
  w.put<int32_t>(ask ? pending->rank : -1);
  const auto len = static_cast<uint32_t>(enc.frame.size() - wire::kFrameHeaderBytes);
  std::memcpy(enc.frame.data(), &len, sizeof len);
  enc.upstream.reset();

  // Queued frees for these workers go first, in the same write; one
  // wake-up of the I/O thread for all of them.
  thread_local std::vector<uint8_t> frees;
  thread_local std::vector<size_t> ends;
  c10::SmallVector<runtime::Runtime::Send, 16> sends;
  std::lock_guard<std::mutex> lk(order_mu_);
  runtime::Runtime& rt = this->rt();
  // Autograd flags under the order lock, in step with the GradMode messages
  // (set_grad_mode): outputs record history where the workers do.
  bool requires_grad = grad_enabled_.load(std::memory_order_relaxed) && enc.any_requires_grad;
  if (op.is_detach) requires_grad = false;
  if (op.is_requires_grad_) {
    const bool* flag = nargs > 1 ? std::get_if<bool>(&Access::value(args[1])) : nullptr;
    requires_grad = flag ? *flag : true;
  }
  for (size_t i = 0; i < entry->outs.size(); ++i) {
    const OutSpec& o = entry->outs[i];
    TensorImpl& t = *Access::impl(outs[i]);
    if (o.writes_arg >= 0) {
      if (op.is_requires_grad_) t.requires_grad = requires_grad;
    } else {
      t.requires_grad = requires_grad && (pending || at::isFloatingType(o.meta.dtype));
    }
  }
  define(rt, op);
  frees.clear();
  ends.clear();
  release_.take(ranks, frees, ends);
  size_t begin = 0;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ends[i] > begin) sends.push_back({ranks[i], frees.data() + begin, ends[i] - begin});
    sends.push_back({ranks[i], enc.frame.data(), enc.frame.size()});
    begin = ends[i];
  }
  try {
    rt.send(sends.data(), sends.size());
  } catch (const WorkerLost& e) {
    // A worker lost since make_room: those after it in the batch still get
    // the frees taken for them (the op is not sent: it fails here).
    bool after = false;
    for (size_t i = 0, b = 0; i < ranks.size(); b = ends[i], ++i) {
      if (after && ends[i] > b) {
        const runtime::Runtime::Send s{ranks[i], frees.data() + b, ends[i] - b};
        try {
          rt.send(&s, 1);
        } catch (const WorkerLost&) {
        }
      }
      after = after || ranks[i] == e.rank();
    }
    throw;
  }
  return outs;
}

void Engine::resolve(PendingMeta& p) {
  // One thread waits for the report (a reply is taken once); the others
  // wait for that thread.
  std::lock_guard<std::mutex> wait(p.wait_mu);
  {
    std::lock_guard<std::mutex> lk(p.mu);
    if (p.resolved) return;
  }
  runtime::Runtime::Reply reply = rt().wait_reply(p.rank, p.request, std::nullopt);
  std::lock_guard<std::mutex> lk(p.mu);
  if (p.resolved) return;
  p.resolved = true;
  if (auto* f = std::get_if<wire::Failed>(&reply)) {
    p.error_op = f->op;
    p.error = f->message;
    p.error_value = f->value;
    return;
  }
  auto* m = std::get_if<wire::MetaReply>(&reply);
  if (!m) throw ProtocolError(fmt::format("worker {} answered a metadata request with another kind of reply", p.rank));
  for (const auto& meta : m->metas) p.metas.push_back(Meta::from_wire(meta));
  // Next time, this signature is known without asking.
  if (!p.cache_key.empty()) cache_.learn(p.cache_key, p.metas);
}

std::vector<Tensor> Engine::call_remote(const DeviceMesh& mesh, const std::string& name,
                                        const std::vector<Tensor>& inputs, const std::vector<double>& scalars) {
  constexpr uint32_t kMaxOutputs = 256;
  const std::vector<int>& ranks = ranks_of(mesh);
  wire::CallRemote c;
  c.name = name;
  // The signature: name, inputs' metadata, scalar values.
  std::string key = name;
  key.push_back('\0');
  for (const auto& t : inputs) {
    COX_CHECK_ARG(t.defined(), "call_remote('{}'): an input is an undefined tensor", name);
    const auto& impl = Access::impl(t);
    c.inputs.push_back(impl->id);
    put_tensor_key(key, impl->meta());
  }
  put_key(key, scalars.data(), scalars.size() * sizeof(double));
  c.scalars = scalars;
  c.reporter = ranks.front();

  auto handles = [&](const std::vector<Meta>& metas) {
    std::vector<Tensor> outs;
    for (size_t i = 0; i < metas.size(); ++i) {
      auto t = std::make_shared<TensorImpl>(mesh, c.out_base + i);
      t->set_known(metas[i]);
      outs.push_back(handle(std::move(t)));
    }
    return outs;
  };
  std::optional<std::vector<Meta>> known;
  {
    std::lock_guard<std::mutex> lk(remote_mu_);
    if (auto it = remote_cache_.find(key); it != remote_cache_.end()) known = it->second;
  }
  rt().make_room(ranks, "sending work");
  if (known) {
    // Known signature: no waiting. The workers check that the function
    // returns as many tensors as last time; if not, or if it fails, the
    // outputs become error values.
    c.max_outputs = static_cast<uint32_t>(known->size());
    c.out_base = next_tensor_id_.fetch_add(std::max<uint64_t>(known->size(), 1));
    c.meta_request = 0;
    std::lock_guard<std::mutex> lk(order_mu_);
    send_all(rt(), ranks, wire::encode_frame(c));
    return handles(*known);
  }
  // First call with this signature: the reporting worker says how many
  // outputs there are and what they are.
  c.max_outputs = kMaxOutputs;
  c.out_base = next_tensor_id_.fetch_add(kMaxOutputs);
  c.meta_request = rt().new_request_id();
  {
    std::lock_guard<std::mutex> lk(order_mu_);
    send_all(rt(), ranks, wire::encode_frame(c));
  }
  auto pending = std::make_shared<PendingMeta>();
  pending->request = c.meta_request;
  pending->rank = c.reporter;
  resolve(*pending);
  if (!pending->error.empty()) {
    // The number of outputs is unknown: free every reserved id.
    for (uint32_t i = 0; i < kMaxOutputs; ++i) release(c.out_base + i, ranks);
    throw RemoteError(c.reporter, pending->error_op, pending->error);
  }
  {
    std::lock_guard<std::mutex> lk(remote_mu_);
    remote_cache_.emplace(key, pending->metas);
  }
  return handles(pending->metas);
}

Tensor Engine::put(const DeviceMesh& mesh, const std::vector<at::Tensor>& values, bool requires_grad) {
  const auto& ranks = ranks_of(mesh);
  COX_INTERNAL_ASSERT(values.size() == 1 || values.size() == ranks.size(), "{} values for {} ranks", values.size(),
                      ranks.size());
  auto t = std::make_shared<TensorImpl>(mesh, new_tensor_id());
  t->set_known(Meta::of(values[0].contiguous()));
  t->requires_grad = requires_grad;
  // Streamed in chunks within the frame limit. A small value is copied into
  // the queue and this returns at once; a large one is sent from the
  // caller's memory (no copy, and controller memory that does not grow with
  // it) and this returns once it is written, so that the caller may change
  // it after.
  std::vector<std::pair<int, uint64_t>> sent;
  std::shared_ptr<const at::Tensor> shared;
  runtime::Runtime& rt = this->rt();
  rt.make_room(ranks, "from_local");  // outside the engine's locks
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i == 0 || values.size() > 1) {
      shared = std::make_shared<const at::Tensor>((values.size() == 1 ? values[0] : values[i]).contiguous().cpu());
    }
    const at::Tensor& c = *shared;
    wire::Put p;
    p.id = t->id;
    p.dtype = static_cast<uint8_t>(c.scalar_type());
    p.requires_grad = requires_grad;
    p.sizes.assign(c.sizes().begin(), c.sizes().end());
    p.nbytes = c.nbytes();
    const auto* data = static_cast<const uint8_t*>(c.data_ptr());
    if (p.nbytes <= kCopyPutBytes) {
      std::vector<uint8_t> frames = wire::encode_frame(p);
      wire::append_chunks(frames, wire::MsgType::kPutData, p.id, data, p.nbytes, rt.options().max_frame_bytes);
      const runtime::Runtime::Send s{ranks[i], frames.data(), frames.size()};
      rt.send(&s, 1);
    } else {
      sent.emplace_back(ranks[i], rt.post_tensor(ranks[i], p, data, shared));
    }
  }
  for (auto [rank, position] : sent) rt.wait_sent(rank, position, "from_local");
  return handle(std::move(t));
}

uint64_t Engine::fetch(int rank, uint64_t id) {
  runtime::Runtime& rt = this->rt();
  const uint64_t request = rt.new_request_id();
  release_.flush();
  rt.post_now(rank, wire::encode_frame(wire::Fetch{request, id}));
  return request;
}

at::Tensor Engine::wait_fetch(int rank, uint64_t request, std::optional<std::chrono::milliseconds> timeout) {
  runtime::Runtime& rt = this->rt();
  runtime::Runtime::Reply reply = rt.wait_reply(rank, request, timeout);
  if (auto* f = std::get_if<wire::Failed>(&reply)) {
    rt.error_delivered(f->value);  // raised here: not again by sync
    // A communication failure names the workers it needed: when one of
    // them is gone (or goes within a heartbeat timeout), that is the error.
    if (!f->peers.empty()) {
      rt.await_loss(std::vector<int>(f->peers.begin(), f->peers.end()), rt.options().heartbeat_timeout);
    }
    throw RemoteError(rank, f->op, f->message);
  }
  auto* fetched = std::get_if<runtime::Runtime::Fetched>(&reply);
  if (!fetched) throw ProtocolError(fmt::format("worker {} answered a fetch with another kind of reply", rank));
  return std::move(fetched->value);
}

void Engine::backward(const Tensor& t, const Tensor& grad) {
  if (grad.defined()) {
    COX_CHECK_ARG(grad.mesh() == t.mesh() || grad.mesh().shape() == t.mesh().shape(),
                  "backward: the gradient is on mesh {}, the tensor on {}", grad.mesh().shape().to_string(),
                  t.mesh().shape().to_string());
    COX_CHECK_ARG(grad.sizes() == t.sizes(), "backward: a gradient of sizes [{}] for a tensor of sizes [{}]",
                  fmt::join(grad.sizes(), ", "), fmt::join(t.sizes(), ", "));
  } else {
    COX_CHECK_ARG(t.numel() == 1, "backward: a tensor of {} elements needs a gradient (backward(grad))", t.numel());
  }
  COX_CHECK_ARG(t.requires_grad(), "backward: the tensor does not require grad (no autograd history)");
  const auto& ranks = ranks_of(t.mesh());
  rt().make_room(ranks, "sending work");
  const auto frame = wire::encode_frame(wire::Backward{Access::impl(t)->id, grad.defined() ? Access::impl(grad)->id : 0});
  std::lock_guard<std::mutex> lk(order_mu_);
  send_all(rt(), ranks, frame);
}

Tensor Engine::grad(const Tensor& t) {
  const auto& ranks = ranks_of(t.mesh());
  auto g = std::make_shared<TensorImpl>(t.mesh(), new_tensor_id());
  Meta m = Access::impl(t)->meta();
  // A gradient is contiguous whatever the strides of its tensor.
  m.strides = Meta::of(at::empty(m.sizes, at::TensorOptions().device(at::kMeta))).strides;
  g->set_known(std::move(m));
  rt().make_room(ranks, "sending work");
  const auto frame = wire::encode_frame(wire::Grad{Access::impl(t)->id, g->id});
  std::lock_guard<std::mutex> lk(order_mu_);
  send_all(rt(), ranks, frame);
  return handle(std::move(g));
}

bool Engine::set_grad_mode(bool enabled) {
  const auto frame = wire::encode_frame(wire::GradMode{enabled});
  std::lock_guard<std::mutex> lk(order_mu_);
  const bool previous = grad_enabled_.exchange(enabled);
  send_every_worker(rt(), frame);
  return previous;
}

void Engine::seed(const DeviceMesh& mesh, uint64_t seed, bool per_rank) {
  const auto& ranks = ranks_of(mesh);
  rt().make_room(ranks, "sending work");
  const auto frame = wire::encode_frame(wire::Seed{seed, per_rank});
  std::lock_guard<std::mutex> lk(order_mu_);
  send_all(rt(), ranks, frame);
}

void Engine::load_library(const DeviceMesh& mesh, const std::string& path) {
  runtime::Runtime& rt = this->rt();
  std::vector<std::pair<int, uint64_t>> requests;
  for (int r : ranks_of(mesh)) {
    const uint64_t request = rt.new_request_id();
    rt.post_now(r, wire::encode_frame(wire::LoadLibrary{request, path}));
    requests.emplace_back(r, request);
  }
  for (auto [r, request] : requests) {
    runtime::Runtime::Reply reply = rt.wait_reply(r, request, std::nullopt);
    if (auto* f = std::get_if<wire::Failed>(&reply)) throw RemoteError(r, "load_library('" + path + "')", f->message);
  }
}

int64_t Engine::live_tensors(int rank) {
  runtime::Runtime& rt = this->rt();
  const uint64_t request = rt.new_request_id();
  release_.flush();
  rt.post_now(rank, wire::encode_frame(wire::Stats{request}));
  runtime::Runtime::Reply reply = rt.wait_reply(rank, request, std::nullopt);
  auto* stats = std::get_if<wire::StatsReply>(&reply);
  if (!stats) throw ProtocolError(fmt::format("worker {} answered a stats request with another kind of reply", rank));
  return stats->live;
}

void Engine::sync(const DeviceMesh& mesh, std::optional<std::chrono::milliseconds> timeout) {
  release_.flush();
  rt().sync_ranks(ranks_of(mesh), timeout);
}

}  // namespace cox::tensor
