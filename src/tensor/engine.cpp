// The controller's tensor engine.
#include "tensor/engine.hpp"

#include "common/check.hpp"
#include "tensor/checks.hpp"

#include <ATen/ATen.h>

#include <deque>

namespace cox::tensor {

using wire::ArgTag;

namespace {
constexpr size_t kMaxCacheEntries = 1 << 16;
}  // namespace
using wire::Reader;

namespace {
// from_local of at most this many bytes per worker copies them into the
// send queue and returns at once; larger ones are sent from the caller's
// memory and wait until written.
constexpr uint64_t kCopyPutBytes = uint64_t{1} << 20;
}  // namespace
using wire::Writer;

// ---------------------------------------------------------------------------
// Handles

PendingMeta::~PendingMeta() {
  if (resolved) return;
  if (auto e = engine.lock()) e->forget_fetch(rank, request);
}

TensorImpl::~TensorImpl() {
  if (mesh.engine()) mesh.engine()->release(id, mesh.info()->ranks);
}

const Meta& TensorImpl::meta() {
  if (known) return *known;
  COX_INTERNAL_ASSERT(pending != nullptr, "tensor {} has neither metadata nor a pending report", id);
  mesh.engine()->resolve(*pending);
  std::lock_guard<std::mutex> lk(pending->mu);
  if (!pending->error.empty()) {
    try {
      mesh.engine()->impl().error_delivered(pending->error_value);  // raised here: not again by sync
    } catch (const Error&) {  // the controller has shut down
    }
    throw RemoteError(pending->rank, pending->error_op, pending->error);
  }
  if (pending_index >= pending->metas.size()) {
    throw ProtocolError(fmt::format("worker {} reported the metadata of {} outputs; output {} has none", pending->rank,
                                    pending->metas.size(), pending_index));
  }
  known = pending->metas[pending_index];
  pending.reset();
  return *known;
}

// ---------------------------------------------------------------------------
// Op registry: one per process, like libtorch's dispatcher it indexes.

namespace {

struct Registry {
  std::mutex mu;
  std::deque<OpInfo> ops;
  std::unordered_map<std::string, const OpInfo*> by_name;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: handles may outlive static destruction
  return *r;
}

const c10::Type* unwrap_optional(const c10::TypePtr& t) {
  if (auto opt = t->cast<c10::OptionalType>()) return opt->getElementType().get();
  return t.get();
}

}  // namespace

const OpInfo& intern_op(const std::string& name, const std::string& overload) {
  Registry& reg = registry();
  const std::string qualified = overload.empty() ? name : name + "." + overload;
  std::lock_guard<std::mutex> lk(reg.mu);
  if (auto it = reg.by_name.find(qualified); it != reg.by_name.end()) return *it->second;
  auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
  COX_CHECK_ARG(handle.has_value(), "unknown op '{}' (name '{}', overload '{}')", qualified, name, overload);
  OpInfo& op = reg.ops.emplace_back(*handle);
  op.id = static_cast<uint32_t>(reg.ops.size());
  op.name = name;
  op.overload = overload;
  op.qualified = qualified;
  const c10::FunctionSchema& schema = handle->schema();
  op.nargs = schema.arguments().size();
  for (const auto& a : schema.arguments()) {
    op.device_arg.push_back(unwrap_optional(a.type())->kind() == c10::TypeKind::DeviceObjType);
    op.has_default.push_back(a.default_value().has_value());
    op.defaults.push_back(a.default_value() ? *a.default_value() : c10::IValue());
  }
  for (const auto& ret : schema.returns()) {
    int writes = -1;
    if (ret.alias_info() && ret.alias_info()->isWrite()) {
      for (size_t i = 0; i < schema.arguments().size(); ++i) {
        const auto& ai = schema.arguments()[i].alias_info();
        if (ai && ai->isWrite() && ai->beforeSets() == ret.alias_info()->beforeSets()) writes = static_cast<int>(i);
      }
    }
    op.return_writes_arg.push_back(writes);
    if (ret.type()->kind() == c10::TypeKind::ListType) op.returns_list = true;
  }
  op.is_detach = name == "aten::detach";
  op.is_requires_grad_ = name == "aten::requires_grad_";
  reg.by_name.emplace(qualified, &op);
  return op;
}

// ---------------------------------------------------------------------------
// Engine

void detach_engine(Engine& engine) { engine.detach(); }

}  // namespace cox::tensor

namespace cox {
std::shared_ptr<tensor::Engine> Controller::Impl::engine() {
  std::lock_guard<std::mutex> lk(mu_);
  if (!engine_) engine_ = std::make_shared<tensor::Engine>(this);
  return engine_;
}
}  // namespace cox

namespace cox::tensor {

void Engine::detach() {
  std::lock_guard<std::recursive_mutex> lk(mu_);
  std::lock_guard<std::mutex> lk2(free_mu_);
  impl_ = nullptr;
}

Controller::Impl& Engine::impl() {
  if (!impl_) throw Error("the controller of this mesh has shut down");
  return *impl_;
}

void Engine::post_all(const std::vector<int>& ranks, const std::vector<uint8_t>& frame) { impl().post(ranks, frame); }

void Engine::define(const OpInfo& op) {
  if (op.id < defined_.size() && defined_[op.id]) return;
  if (defined_.size() <= op.id) defined_.resize(op.id + 1, false);
  wire::DefineOp d;
  d.op = op.id;
  d.name = op.name;
  d.overload = op.overload;
  const auto frame = wire::encode_frame(d);
  Controller::Impl& c = impl();
  // Every worker learns every op: sub-meshes change, the table does not.
  for (int r = 0; r < c.size(); ++r) {
    try {
      c.post(r, frame.data(), frame.size());
    } catch (const WorkerLost&) {
    }
  }
  defined_[op.id] = true;
}

namespace {

void put_key(std::string& key, const void* p, size_t n) { key.append(static_cast<const char*>(p), n); }
template <class T>
void put_key(std::string& key, T v) {
  put_key(key, &v, sizeof v);
}

void encode_tensor_key(std::string& key, const Meta& m) {
  put_key(key, static_cast<uint8_t>(m.dtype));
  put_key(key, static_cast<uint8_t>(m.sizes.size()));
  put_key(key, m.sizes.data(), m.sizes.size() * sizeof(int64_t));
  put_key(key, m.strides.data(), m.strides.size() * sizeof(int64_t));
}

// A default argument, as sent.
void encode_default(Writer& w, std::string& key, const OpInfo& op, size_t i) {
  const c10::IValue& v = op.defaults[i];
  auto tag = [&](ArgTag t) {
    w.put(static_cast<uint8_t>(t));
    put_key(key, static_cast<uint8_t>(t));
  };
  if (op.device_arg[i]) return tag(ArgTag::kDevice);
  if (v.isNone()) return tag(ArgTag::kNone);
  if (v.isBool()) {
    tag(ArgTag::kBool);
    w.put<uint8_t>(v.toBool());
  } else if (v.isInt()) {
    tag(ArgTag::kInt);
    w.put<int64_t>(v.toInt());
  } else if (v.isDouble()) {
    tag(ArgTag::kDouble);
    w.put<double>(v.toDouble());
  } else if (v.isIntList()) {
    tag(ArgTag::kIntList);
    auto l = v.toIntList();
    w.put(static_cast<uint16_t>(l.size()));
    for (int64_t x : l) w.put(x);
  } else if (v.isString()) {
    tag(ArgTag::kString);
    w.put_string(v.toStringRef());
  } else {
    throw InvalidArgument(fmt::format("{}: default value of argument {} ({}) is not supported", op.qualified, i,
                                      v.tagKind()));
  }
}

std::string describe_args(const Arg* args, size_t n) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < n; ++i) {
    const auto& v = args[i].value();
    if (auto t = std::get_if<std::shared_ptr<TensorImpl>>(&v)) {
      parts.push_back(*t && (*t)->known ? (*t)->known->to_string() : "Tensor");
    } else if (auto l = std::get_if<std::vector<std::shared_ptr<TensorImpl>>>(&v)) {
      std::vector<std::string> items;
      for (auto& x : *l) items.push_back(x && x->known ? x->known->to_string() : "Tensor");
      parts.push_back("[" + fmt::format("{}", fmt::join(items, ", ")) + "]");
    } else if (auto i = std::get_if<int64_t>(&v)) {
      parts.push_back(std::to_string(*i));
    } else if (auto d = std::get_if<double>(&v)) {
      parts.push_back(fmt::format("{}", *d));
    } else if (auto b = std::get_if<bool>(&v)) {
      parts.push_back(*b ? "true" : "false");
    } else if (auto il = std::get_if<std::vector<int64_t>>(&v)) {
      parts.push_back(fmt::format("[{}]", fmt::join(*il, ", ")));
    } else if (auto st = std::get_if<at::ScalarType>(&v)) {
      parts.push_back(c10::toString(*st));
    } else if (auto s = std::get_if<std::string>(&v)) {
      parts.push_back("'" + *s + "'");
    } else {
      parts.push_back("None");
    }
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

Engine::CacheEntry Engine::infer(const OpInfo& op, const Arg* args, size_t nargs) {
  torch::jit::Stack stack;
  stack.reserve(op.nargs);
  for (size_t i = 0; i < op.nargs; ++i) {
    if (op.device_arg[i]) {
      stack.emplace_back(at::Device(at::kMeta));
      continue;
    }
    if (i >= nargs) {
      stack.push_back(op.defaults[i]);
      continue;
    }
    const auto& v = args[i].value();
    if (auto t = std::get_if<std::shared_ptr<TensorImpl>>(&v)) {
      stack.emplace_back((*t)->meta().to_meta_tensor());
    } else if (auto l = std::get_if<std::vector<std::shared_ptr<TensorImpl>>>(&v)) {
      std::vector<at::Tensor> ts;
      for (auto& x : *l) ts.push_back(x->meta().to_meta_tensor());
      stack.emplace_back(std::move(ts));
    } else if (auto iv = std::get_if<int64_t>(&v)) {
      stack.emplace_back(*iv);
    } else if (auto d = std::get_if<double>(&v)) {
      stack.emplace_back(*d);
    } else if (auto b = std::get_if<bool>(&v)) {
      stack.emplace_back(*b);
    } else if (auto il = std::get_if<std::vector<int64_t>>(&v)) {
      stack.emplace_back(*il);
    } else if (auto st = std::get_if<at::ScalarType>(&v)) {
      stack.emplace_back(*st);
    } else if (auto s = std::get_if<std::string>(&v)) {
      stack.emplace_back(*s);
    } else {
      stack.emplace_back();
    }
  }
  CacheEntry entry;
  try {
    call_meta_checked(op.handle, stack);  // the meta run, and what it misses (tensor/checks.cpp)
  } catch (const c10::NotImplementedError&) {
    // No meta kernel: the workers will tell.
    COX_CHECK_ARG(!op.returns_list, "{} has no meta kernel and returns a list of tensors, which is not supported",
                  op.qualified);
    entry.learned = true;
    for (int w : op.return_writes_arg) entry.outs.push_back({w, {}});
    return entry;
  } catch (const c10::Error& e) {
    throw InvalidArgument(fmt::format("{}({}): {}", op.qualified, describe_args(args, nargs), e.what_without_backtrace()));
  } catch (const cox::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw InvalidArgument(fmt::format("{}({}): {}", op.qualified, describe_args(args, nargs), e.what()));
  }
  for (size_t i = 0; i < stack.size(); ++i) {
    const int writes = i < op.return_writes_arg.size() ? op.return_writes_arg[i] : -1;
    const c10::IValue& v = stack[i];
    if (writes >= 0) {
      entry.outs.push_back({writes, {}});
    } else if (v.isTensor()) {
      entry.outs.push_back({-1, Meta::of(v.toTensor())});
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) entry.outs.push_back({-1, Meta::of(t)});
    } else {
      throw InvalidArgument(fmt::format("{} returns a {}, not a tensor; only tensor results are supported",
                                        op.qualified, v.tagKind()));
    }
  }
  return entry;
}

std::vector<Tensor> Engine::call(const DeviceMesh& mesh, const OpInfo& op, const Arg* args, size_t nargs) {
  COX_CHECK_ARG(nargs <= op.nargs, "{} takes {} arguments, got {}", op.qualified, op.nargs, nargs);
  // Backpressure: wait for room on every worker of the mesh before taking
  // the engine's lock, so that a wait holds up only this thread, and a
  // Timeout leaves no worker with half an op.
  impl().make_room(mesh.info()->ranks, "sending work");
  std::unique_lock<std::recursive_mutex> lk(mu_);
  define(op);
  bool any_requires_grad = false;
  frame_.resize(wire::kFrameHeaderBytes);
  Writer w(frame_);
  w.put(static_cast<uint8_t>(wire::MsgType::kOp));
  w.put(op.id);
  w.put(static_cast<uint16_t>(op.nargs));
  key_.clear();
  put_key(key_, op.id);
  auto tag = [&](ArgTag t) {
    w.put(static_cast<uint8_t>(t));
    put_key(key_, static_cast<uint8_t>(t));
  };
  // An input whose metadata never came (its op failed on the reporting
  // worker) makes this op an error value too: it is still sent, so that the
  // workers mark its outputs, but its outputs carry that input's error.
  std::shared_ptr<PendingMeta> upstream;
  auto meta_of = [&](TensorImpl& t) -> const Meta& {
    static const Meta none;
    if (!t.known && t.pending) {
      resolve(*t.pending);
      std::lock_guard<std::mutex> plk(t.pending->mu);
      if (!t.pending->error.empty()) {
        if (!upstream) upstream = t.pending;
        return none;
      }
    }
    return t.meta();
  };
  auto same_mesh = [&](const TensorImpl& t) {
    COX_CHECK_ARG(t.mesh.engine() == mesh.engine(), "{}: a tensor of another controller used in an op on mesh {}",
                  op.qualified, mesh.shape().to_string());
    COX_CHECK_ARG(t.mesh.info() == mesh.info() || t.mesh.shape() == mesh.shape(),
                  "{}: a tensor on mesh {} used in an op on mesh {}; move it with to_mesh first", op.qualified,
                  t.mesh.shape().to_string(true), mesh.shape().to_string(true));
  };
  for (size_t i = 0; i < op.nargs; ++i) {
    if (i >= nargs) {
      COX_CHECK_ARG(op.has_default[i], "{}: argument {} ('{}') is required", op.qualified, i,
                    op.handle.schema().arguments()[i].name());
      encode_default(w, key_, op, i);
      continue;
    }
    if (op.device_arg[i]) {
      tag(ArgTag::kDevice);
      continue;
    }
    const auto& v = args[i].value();
    switch (v.index()) {
      case 0:
        tag(ArgTag::kNone);
        break;
      case 1: {
        const auto& t = std::get<1>(v);
        COX_CHECK_ARG(t != nullptr, "{}: argument {} is an undefined tensor", op.qualified, i);
        same_mesh(*t);
        tag(ArgTag::kTensor);
        w.put(t->id);
        encode_tensor_key(key_, meta_of(*t));
        any_requires_grad |= t->requires_grad;
        break;
      }
      case 2: {
        const auto& l = std::get<2>(v);
        tag(ArgTag::kTensorList);
        w.put(static_cast<uint16_t>(l.size()));
        put_key(key_, static_cast<uint16_t>(l.size()));
        for (const auto& t : l) {
          COX_CHECK_ARG(t != nullptr, "{}: argument {} holds an undefined tensor", op.qualified, i);
          same_mesh(*t);
          w.put(t->id);
          encode_tensor_key(key_, meta_of(*t));
          any_requires_grad |= t->requires_grad;
        }
        break;
      }
      case 3:
        tag(ArgTag::kInt);
        w.put(std::get<3>(v));
        put_key(key_, std::get<3>(v));
        break;
      case 4:
        tag(ArgTag::kDouble);
        w.put(std::get<4>(v));
        put_key(key_, std::get<4>(v));
        break;
      case 5:
        tag(ArgTag::kBool);
        w.put<uint8_t>(std::get<5>(v));
        put_key(key_, static_cast<uint8_t>(std::get<5>(v)));
        break;
      case 6: {
        const auto& l = std::get<6>(v);
        tag(ArgTag::kIntList);
        w.put(static_cast<uint16_t>(l.size()));
        put_key(key_, static_cast<uint16_t>(l.size()));
        for (int64_t x : l) w.put(x);
        put_key(key_, l.data(), l.size() * sizeof(int64_t));
        break;
      }
      case 7:
        tag(ArgTag::kScalarType);
        w.put(static_cast<uint8_t>(std::get<7>(v)));
        put_key(key_, static_cast<uint8_t>(std::get<7>(v)));
        break;
      case 8:
        tag(ArgTag::kString);
        w.put_string(std::get<8>(v));
        key_ += std::get<8>(v);
        put_key(key_, static_cast<uint8_t>(0));
        break;
    }
  }

  CacheEntry upstream_entry;
  const CacheEntry* found = nullptr;
  if (upstream) {
    COX_CHECK_ARG(!op.returns_list, "{}: an input is an error value ({} failed: {})", op.qualified,
                  upstream->error_op, upstream->error);
    upstream_entry.learned = true;
    for (int wa : op.return_writes_arg) upstream_entry.outs.push_back({wa, {}});
    found = &upstream_entry;
  } else {
    auto it = cache_.find(key_);
    if (it == cache_.end()) {
      CacheEntry inferred = infer(op, args, nargs);
      // Bounded: a program whose shapes never repeat starts over rather than
      // growing without end.
      if (cache_.size() >= kMaxCacheEntries) cache_.clear();
      it = cache_.emplace(key_, std::move(inferred)).first;
    }
    found = &it->second;
  }
  const CacheEntry& entry = *found;

  // Outputs: ids, in return order; 0 for an input written in place.
  std::vector<Tensor> outs;
  outs.reserve(entry.outs.size());
  std::shared_ptr<PendingMeta> pending = upstream;
  if (!pending && entry.learned) {
    pending = std::make_shared<PendingMeta>();
    pending->engine = weak_from_this();
    pending->request = impl().new_request_id();
    pending->rank = mesh.info()->ranks.front();
    pending->cache_key = key_;
  }
  bool requires_grad = grad_enabled_ && any_requires_grad;
  if (op.is_detach) requires_grad = false;
  if (op.is_requires_grad_) {
    const bool* flag = nargs > 1 ? std::get_if<bool>(&args[1].value()) : nullptr;
    requires_grad = flag ? *flag : true;
  }
  w.put(static_cast<uint32_t>(entry.outs.size()));  // wire::Op::outs
  uint32_t pending_index = 0;
  for (const OutSpec& o : entry.outs) {
    if (o.writes_arg >= 0) {
      w.put<uint64_t>(0);
      const auto& t = std::get<1>(args[o.writes_arg].value());
      if (op.is_requires_grad_) t->requires_grad = requires_grad;
      outs.emplace_back(t);
      continue;
    }
    auto t = std::make_shared<TensorImpl>(mesh, next_tensor_id_++);
    w.put(t->id);
    if (pending) {
      t->pending = pending;
      t->pending_index = pending_index++;
    } else {
      t->known = o.meta;
      t->requires_grad = requires_grad && at::isFloatingType(o.meta.dtype);
    }
    if (pending) t->requires_grad = requires_grad;
    outs.emplace_back(std::move(t));
  }
  const bool ask = pending && !upstream;
  w.put<uint64_t>(ask ? pending->request : 0);
  w.put<int32_t>(ask ? pending->rank : -1);
  const uint32_t len = static_cast<uint32_t>(frame_.size() - wire::kFrameHeaderBytes);
  std::memcpy(frame_.data(), &len, sizeof len);
  {
    // Queued frees for these workers go first, in the same write; one
    // wake-up of the I/O thread for all of them.
    std::lock_guard<std::mutex> flk(free_mu_);
    Controller::Impl::Batch batch(impl());
    for (int r : mesh.info()->ranks) {
      free_frame_.clear();
      append_frees_locked(r, free_frame_);
      if (!free_frame_.empty()) batch.add(r, free_frame_.data(), free_frame_.size());
      batch.add(r, frame_.data(), frame_.size());
    }
  }
  return outs;
}

void Engine::resolve(PendingMeta& p) {
  {
    std::lock_guard<std::mutex> lk(p.mu);
    if (p.resolved) return;
  }
  Controller::Impl::Reply reply = impl().wait_reply(p.rank, p.request, std::nullopt);
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
  if (!p.cache_key.empty()) {
    std::lock_guard<std::recursive_mutex> clk(mu_);
    auto it = cache_.find(p.cache_key);
    if (it != cache_.end() && it->second.learned) {
      size_t k = 0;
      for (auto& o : it->second.outs) {
        if (o.writes_arg < 0 && k < p.metas.size()) o.meta = p.metas[k++];
      }
      it->second.learned = false;
    }
  }
}

std::vector<Tensor> Engine::call_remote(const DeviceMesh& mesh, const std::string& name,
                                        const std::vector<Tensor>& inputs, const std::vector<double>& scalars) {
  constexpr uint32_t kMaxOutputs = 256;
  wire::CallRemote c;
  c.name = name;
  // The signature: name, inputs' metadata, scalar values.
  std::string key = name;
  key.push_back('\0');
  for (const auto& t : inputs) {
    COX_CHECK_ARG(t.defined(), "call_remote('{}'): an input is an undefined tensor", name);
    c.inputs.push_back(t.impl()->id);
    encode_tensor_key(key, t.impl()->meta());
  }
  put_key(key, scalars.data(), scalars.size() * sizeof(double));
  c.scalars = scalars;
  c.reporter = mesh.info()->ranks.front();

  std::unique_lock<std::recursive_mutex> lk(mu_);
  if (auto it = remote_cache_.find(key); it != remote_cache_.end()) {
    // Known signature: no waiting. The workers check that the function
    // returns as many tensors as last time; if not, or if it fails, the
    // outputs become error values.
    const std::vector<Meta>& metas = it->second;
    c.max_outputs = static_cast<uint32_t>(metas.size());
    c.out_base = next_tensor_id_.fetch_add(std::max<uint64_t>(metas.size(), 1));
    c.meta_request = 0;
    post_all(mesh.info()->ranks, wire::encode_frame(c));
    std::vector<Tensor> outs;
    for (size_t i = 0; i < metas.size(); ++i) {
      auto t = std::make_shared<TensorImpl>(mesh, c.out_base + i);
      t->known = metas[i];
      outs.emplace_back(std::move(t));
    }
    return outs;
  }
  // First call with this signature: the reporting worker says how many
  // outputs there are and what they are.
  c.max_outputs = kMaxOutputs;
  c.out_base = next_tensor_id_.fetch_add(kMaxOutputs);
  c.meta_request = impl().new_request_id();
  post_all(mesh.info()->ranks, wire::encode_frame(c));
  lk.unlock();
  auto pending = std::make_shared<PendingMeta>();
  pending->request = c.meta_request;
  pending->rank = c.reporter;
  resolve(*pending);
  if (!pending->error.empty()) {
    // The number of outputs is unknown: free every reserved id.
    for (uint32_t i = 0; i < kMaxOutputs; ++i) release(c.out_base + i, mesh.info()->ranks);
    throw RemoteError(c.reporter, pending->error_op, pending->error);
  }
  lk.lock();
  remote_cache_.emplace(key, pending->metas);
  std::vector<Tensor> outs;
  for (size_t i = 0; i < pending->metas.size(); ++i) {
    auto t = std::make_shared<TensorImpl>(mesh, c.out_base + i);
    t->known = pending->metas[i];
    outs.emplace_back(std::move(t));
  }
  return outs;
}

Tensor Engine::put(const DeviceMesh& mesh, const std::vector<at::Tensor>& values, bool requires_grad) {
  const auto& ranks = mesh.info()->ranks;
  COX_INTERNAL_ASSERT(values.size() == 1 || values.size() == ranks.size(), "{} values for {} ranks", values.size(),
                      ranks.size());
  auto t = std::make_shared<TensorImpl>(mesh, next_tensor_id_++);
  t->known = Meta::of(values[0].contiguous());
  t->requires_grad = requires_grad;
  // Streamed in chunks within the frame limit. A small value is copied into
  // the queue and this returns at once; a large one is sent from the
  // caller's memory (no copy, and controller memory that does not grow with
  // it) and this returns once it is written, so that the caller may change
  // it after.
  std::vector<std::pair<int, uint64_t>> sent;
  std::shared_ptr<const at::Tensor> shared;
  impl().make_room(ranks, "from_local");  // outside the engine's lock
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i == 0 || values.size() > 1) shared = std::make_shared<const at::Tensor>((values.size() == 1 ? values[0] : values[i]).contiguous().cpu());
    const at::Tensor& c = *shared;
    wire::Put p;
    p.id = t->id;
    p.dtype = static_cast<uint8_t>(c.scalar_type());
    p.requires_grad = requires_grad;
    p.sizes.assign(c.sizes().begin(), c.sizes().end());
    p.nbytes = c.nbytes();
    const auto* data = static_cast<const uint8_t*>(c.data_ptr());
    std::lock_guard<std::recursive_mutex> lk(mu_);
    if (p.nbytes <= kCopyPutBytes) {
      std::vector<uint8_t> frames = wire::encode_frame(p);
      wire::append_chunks(frames, wire::MsgType::kPutData, p.id, data, p.nbytes, impl().options().max_frame_bytes);
      impl().post_nowait(ranks[i], frames.data(), frames.size());
    } else {
      sent.emplace_back(ranks[i], impl().post_tensor(ranks[i], p, data, shared));
    }
  }
  for (auto [rank, position] : sent) impl().wait_sent(rank, position, "from_local");
  return Tensor(std::move(t));
}

uint64_t Engine::fetch(int rank, uint64_t id) {
  const uint64_t request = impl().new_request_id();
  std::lock_guard<std::recursive_mutex> lk(mu_);
  {
    std::lock_guard<std::mutex> flk(free_mu_);
    flush_frees_locked(-1);
  }
  impl().post_now(rank, wire::encode_frame(wire::Fetch{request, id}));
  return request;
}

at::Tensor Engine::wait_fetch(int rank, uint64_t request, std::optional<std::chrono::milliseconds> timeout) {
  Controller::Impl::Reply reply = impl().wait_reply(rank, request, timeout);
  if (auto* f = std::get_if<wire::Failed>(&reply)) {
    impl().error_delivered(f->value);  // raised here: not again by sync
    // A communication failure names the workers it needed: when one of
    // them is gone (or goes within a heartbeat timeout), that is the error.
    if (!f->peers.empty()) {
      impl().await_loss(std::vector<int>(f->peers.begin(), f->peers.end()), impl().options().heartbeat_timeout);
    }
    throw RemoteError(rank, f->op, f->message);
  }
  auto* fetched = std::get_if<Controller::Impl::Fetched>(&reply);
  if (!fetched) throw ProtocolError(fmt::format("worker {} answered a fetch with another kind of reply", rank));
  return std::move(fetched->value);
}

// (Also for metadata reports nobody will read.)
void Engine::forget_fetch(int rank, uint64_t request) noexcept {
  std::lock_guard<std::mutex> lk(free_mu_);  // as release(): detach() may be clearing impl_
  if (impl_) impl_->forget(rank, request);
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
  std::lock_guard<std::recursive_mutex> lk(mu_);
  post_all(t.mesh().info()->ranks,
           wire::encode_frame(wire::Backward{t.impl()->id, grad.defined() ? grad.impl()->id : 0}));
}

Tensor Engine::grad(const Tensor& t) {
  auto g = std::make_shared<TensorImpl>(t.mesh(), next_tensor_id_++);
  g->known = t.impl()->meta();
  // A gradient is contiguous whatever the strides of its tensor.
  g->known->strides = Meta::of(at::empty(g->known->sizes, at::TensorOptions().device(at::kMeta))).strides;
  std::lock_guard<std::recursive_mutex> lk(mu_);
  post_all(t.mesh().info()->ranks, wire::encode_frame(wire::Grad{t.impl()->id, g->id}));
  return Tensor(std::move(g));
}

bool Engine::set_grad_mode(bool enabled) {
  std::lock_guard<std::recursive_mutex> lk(mu_);
  const bool previous = grad_enabled_;
  grad_enabled_ = enabled;
  Controller::Impl& c = impl();
  const auto frame = wire::encode_frame(wire::GradMode{enabled});
  for (int r = 0; r < c.size(); ++r) {
    try {
      c.post(r, frame.data(), frame.size());
    } catch (const WorkerLost&) {
    }
  }
  return previous;
}

void Engine::seed(const DeviceMesh& mesh, uint64_t seed, bool per_rank) {
  std::lock_guard<std::recursive_mutex> lk(mu_);
  post_all(mesh.info()->ranks, wire::encode_frame(wire::Seed{seed, per_rank}));
}

void Engine::load_library(const DeviceMesh& mesh, const std::string& path) {
  std::vector<std::pair<int, uint64_t>> requests;
  for (int r : mesh.info()->ranks) {
    const uint64_t request = impl().new_request_id();
    std::lock_guard<std::recursive_mutex> lk(mu_);
    impl().post_now(r, wire::encode_frame(wire::LoadLibrary{request, path}));
    requests.emplace_back(r, request);
  }
  for (auto [r, request] : requests) {
    Controller::Impl::Reply reply = impl().wait_reply(r, request, std::nullopt);
    if (auto* f = std::get_if<wire::Failed>(&reply)) throw RemoteError(r, "load_library('" + path + "')", f->message);
  }
}

int64_t Engine::live_tensors(int rank) {
  const uint64_t request = impl().new_request_id();
  {
    std::lock_guard<std::recursive_mutex> lk(mu_);
    std::lock_guard<std::mutex> flk(free_mu_);
    flush_frees_locked(-1);
    impl().post_now(rank, wire::encode_frame(wire::Stats{request}));
  }
  Controller::Impl::Reply reply = impl().wait_reply(rank, request, std::nullopt);
  auto* stats = std::get_if<wire::StatsReply>(&reply);
  if (!stats) throw ProtocolError(fmt::format("worker {} answered a stats request with another kind of reply", rank));
  return stats->live;
}

void Engine::sync(const DeviceMesh& mesh, std::optional<std::chrono::milliseconds> timeout) {
  {
    std::lock_guard<std::recursive_mutex> lk(mu_);
    std::lock_guard<std::mutex> flk(free_mu_);
    flush_frees_locked(-1);
  }
  impl().sync_ranks(mesh.info()->ranks, timeout);
}

void Engine::release(uint64_t id, const std::vector<int>& ranks) noexcept {
  std::lock_guard<std::mutex> lk(free_mu_);
  if (!impl_) return;
  if (frees_.empty()) frees_.resize(static_cast<size_t>(impl_->size()));
  for (int r : ranks) {
    auto& q = frees_[static_cast<size_t>(r)];
    q.push_back(id);
    if (q.size() >= 1024) flush_frees_locked(r);
  }
}

void Engine::append_frees_locked(int rank, std::vector<uint8_t>& out) {
  if (frees_.empty()) return;
  auto& q = frees_[static_cast<size_t>(rank)];
  if (q.empty()) return;
  wire::Free f;
  f.ids = wire::Ids{reinterpret_cast<const uint8_t*>(q.data()), static_cast<uint32_t>(q.size())};
  wire::encode_frame(f, out);
  q.clear();
}

void Engine::flush_frees_locked(int rank) {
  if (!impl_ || frees_.empty()) return;
  for (int r = 0; r < impl_->size(); ++r) {
    if (rank >= 0 && r != rank) continue;
    free_frame_.clear();
    append_frees_locked(r, free_frame_);
    if (free_frame_.empty()) continue;
    try {
      impl_->post_nowait(r, free_frame_.data(), free_frame_.size());
    } catch (const WorkerLost&) {
    }
  }
}

}  // namespace cox::tensor
