// The worker's tensor table and the tensor messages.
#include "worker/tensors.hpp"

#include <cox/remote.hpp>

#include "common/check.hpp"
#include "wire/meta.hpp"

#ifdef COX_HAVE_NCCL
#include "collectives/nccl.hpp"
#endif

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <dlfcn.h>
#include <unistd.h>

#include <limits>
#include <unistd.h>

namespace cox::worker {

using wire::ArgTag;
using wire::Reader;
using wire::Writer;

namespace {

std::string message_of(const std::exception& e) {
  if (auto c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  return fmt::format("{}[{}]", c10::toString(t.scalar_type()), fmt::join(t.sizes(), ", "));
}

}  // namespace

namespace {
uint64_t physical_memory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return uint64_t{1} << 40;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}
}  // namespace

Tensors::Tensors(int rank, at::Device device, Outbox& out, Hooks hooks)
    : rank_(rank),
      device_(device),
      out_(out),
      hooks_(std::move(hooks)),
      max_tensor_bytes_(hooks_.max_tensor_bytes ? hooks_.max_tensor_bytes : physical_memory()) {
  if (device_.is_cuda()) {
    gpu_ = make_gpu(device_, [watch = watch_] { watch->check(); }, comm_timeout_);
  }
}

Tensors::~Tensors() {
  // Pending fetches finish (or fail) before the communicators go.
  gpu_.reset();
}

void Tensors::CommWatch::check() {
#ifdef COX_HAVE_NCCL
  std::lock_guard<std::mutex> lk(mu);
  for (auto& [comm, ranks] : comms) {
    try {
      collectives::check_nccl(*comm);
    } catch (const std::exception& e) {
      throw CommFailure(e.what(), ranks);
    }
  }
#endif
}

void Tensors::watch(collectives::Communicator* comm, const std::vector<int32_t>& ranks) {
  std::lock_guard<std::mutex> lk(watch_->mu);
  watch_->comms.emplace_back(comm, ranks);
}

void Tensors::track(collectives::Communicator* comm, const std::vector<int32_t>& ranks) {
  std::lock_guard<std::mutex> lk(members_.mu);
  members_.comms.emplace_back(comm, ranks);
  for (int32_t r : ranks) {
    if (auto it = members_.lost.find(r); it != members_.lost.end()) {
      comm->cancel(fmt::format("worker {} was lost: {}", r, it->second));
      break;
    }
  }
}

void Tensors::untrack(collectives::Communicator* comm) {
  if (!comm) return;
  std::lock_guard<std::mutex> lk(members_.mu);
  auto& v = members_.comms;
  v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& e) { return e.first == comm; }), v.end());
}

void Tensors::peer_lost(int32_t rank, const std::string& reason) {
  // Under the lock: a communicator is untracked before it is destroyed.
  // cancel() only wakes waits; it never waits itself.
  std::lock_guard<std::mutex> lk(members_.mu);
  if (!members_.lost.emplace(rank, reason).second) return;
  const std::string why = fmt::format("worker {} was lost: {}", rank, reason);
  for (auto& [comm, ranks] : members_.comms) {
    if (std::find(ranks.begin(), ranks.end(), rank) != ranks.end()) comm->cancel(why);
  }
}

std::string Tensors::op_name(uint32_t id) const {
  std::lock_guard<std::mutex> lk(names_mu_);
  auto it = names_.find(id);
  return it == names_.end() ? std::string() : it->second;
}

void Tensors::abort_comms([[maybe_unused]] const std::string& why) {
#ifdef COX_HAVE_NCCL
  std::lock_guard<std::mutex> lk(watch_->mu);
  for (auto& [comm, ranks] : watch_->comms) collectives::abort_nccl(*comm, why);
#endif
}

void Tensors::settle(Slot& s) {
  std::shared_ptr<InFlight> f = std::move(s.in_flight);
  s.in_flight.reset();
  if (gpu_ && f->done) gpu_->compute_after(*f->done, s.tensor);
  if (f->status) {
    std::vector<uint8_t> statuses;
    try {
      std::lock_guard<std::mutex> lk(watch_->mu);
      statuses = f->status->finish();
    } catch (const std::exception& e) {
      s = Slot{at::Tensor(), std::make_shared<Failure>(Failure{f->op, e.what(), f->ranks}), nullptr};
      return;
    }
    for (size_t i = 0; i < statuses.size(); ++i) {
      if (statuses[i] == 0) continue;
      s = Slot{at::Tensor(),
               std::make_shared<Failure>(Failure{
                   f->op, fmt::format("the input on worker {} (member {} of the group [{}]) is an error value; fetch it "
                                      "there for the cause",
                                      f->ranks[i], i, fmt::join(f->ranks, ", "))}),
               nullptr};
      return;
    }
  }
}

std::optional<std::string> Tensors::synchronize() {
  if (!gpu_) return std::nullopt;
  try {
    gpu_->synchronize([this] { watch_->check(); }, comm_timeout_);
  } catch (const std::exception& e) {
    abort_comms(e.what());
    return std::string(e.what());
  }
  return std::nullopt;
}

at::ScalarType Tensors::checked_dtype(uint8_t dtype, const char* what) {
  // Undefined sits just below NumOptions: no tensor has it.
  if (dtype >= static_cast<uint8_t>(at::ScalarType::Undefined)) {
    throw ProtocolError(fmt::format("{}: unknown dtype {}", what, static_cast<unsigned>(dtype)));
  }
  return static_cast<at::ScalarType>(dtype);
}

uint64_t Tensors::shape_bytes(c10::IntArrayRef sizes, at::ScalarType dtype, const char* what) {
  uint64_t n = c10::elementSize(dtype);
  for (const int64_t s : sizes) {
    if (s < 0) throw ProtocolError(fmt::format("{}: negative size in [{}]", what, fmt::join(sizes, ", ")));
    if (s != 0 && n > std::numeric_limits<int64_t>::max() / static_cast<uint64_t>(s)) {
      throw ProtocolError(fmt::format("{}: a {}[{}] tensor overflows 64 bits", what, c10::toString(dtype),
                                      fmt::join(sizes, ", ")));
    }
    n *= static_cast<uint64_t>(s);
  }
  // A zero size anywhere: no bytes, however large the rest.
  for (const int64_t s : sizes) {
    if (s == 0) return 0;
  }
  return n;
}

uint64_t Tensors::bounded_bytes(c10::IntArrayRef sizes, at::ScalarType dtype, const char* what) const {
  const uint64_t n = shape_bytes(sizes, dtype, what);
  if (n > max_tensor_bytes_) {
    throw ProtocolError(fmt::format("{}: a {}[{}] tensor of {} bytes exceeds this worker's limit of {} bytes", what,
                                    c10::toString(dtype), fmt::join(sizes, ", "), n, max_tensor_bytes_));
  }
  return n;
}

std::shared_ptr<const Tensors::Failure> Tensors::undefined_failure() {
  static const auto f = [] {
    auto u = std::make_shared<Failure>(Failure{"lookup", "an undefined tensor (an optional output that was not computed)"});
    u->report = false;
    return std::shared_ptr<const Failure>(std::move(u));
  }();
  return f;
}

void Tensors::fail(uint64_t id, std::shared_ptr<const Failure> f) {
  if (f->report && f->origin == 0) {
    // First stored: reported once, under the id every value carrying it
    // names (on every worker that ran the op, the same id).
    f->origin = id;
    wire::Error e;
    e.index = stream_index_;
    e.op = f->op;
    e.message = f->message;
    e.value = id;
    out_.send_now(e);
  }
  table_[id] = Slot{at::Tensor(), std::move(f), nullptr};
}

const Tensors::Slot& Tensors::slot(uint64_t id) const {
  static const Slot missing{at::Tensor(), std::make_shared<Failure>(Failure{"lookup", "no such tensor"}), nullptr};
  auto it = table_.find(id);
  return it == table_.end() ? missing : it->second;
}

void Tensors::define_op(const wire::DefineOp& m) {
  // Op ids are small and dense (the controller numbers ops as it meets
  // them): the table is a vector indexed by them.
  if (m.op >= kMaxOpId) {
    throw ProtocolError(fmt::format("define_op: op id {} is out of range (at most {})", m.op, kMaxOpId - 1));
  }
  if (m.name.empty()) throw ProtocolError(fmt::format("define_op: op id {} with an empty name", m.op));
  if (ops_.size() <= m.op) ops_.resize(size_t{m.op} + 1);
  Op& op = ops_[m.op];
  op.name = m.overload.empty() ? m.name : m.name + "." + m.overload;
  {
    std::lock_guard<std::mutex> lk(names_mu_);
    names_[m.op] = op.name;
  }
  auto handle = c10::Dispatcher::singleton().findSchema({m.name, m.overload});
  op.handle.reset();
  if (handle.has_value()) op.handle.emplace(*handle);
  // An op this libtorch lacks fails when used, not here.
}

std::optional<std::string> Tensors::run_op(const wire::Op& m) {
  Reader r(m.args.data, m.args.size, "op");
  const uint32_t op_id = m.op;
  if (op_id >= ops_.size() || ops_[op_id].name.empty()) {
    throw ProtocolError(fmt::format("op id {} was never defined", op_id));
  }
  const Op& op = ops_[op_id];
  const uint16_t nargs = r.get<uint16_t>("op.nargs");
  torch::jit::Stack& stack = stack_;  // reused: no allocation per op
  stack.clear();
  std::shared_ptr<const Failure> upstream;
  for (uint16_t i = 0; i < nargs; ++i) {
    const uint8_t tag = r.get<uint8_t>("arg.tag");
    switch (static_cast<ArgTag>(tag)) {
      case ArgTag::kNone: stack.emplace_back(); break;
      case ArgTag::kTensor: {
        const Slot& s = use(r.get<uint64_t>("arg.tensor"));
        if (s.failure && !upstream) upstream = s.failure;
        stack.emplace_back(s.tensor);
        break;
      }
      case ArgTag::kTensorList: {
        const uint16_t n = r.get<uint16_t>("arg.tensor_list.n");
        std::vector<at::Tensor> ts;
        ts.reserve(n);
        for (uint16_t k = 0; k < n; ++k) {
          const Slot& s = use(r.get<uint64_t>("arg.tensor_list.id"));
          if (s.failure && !upstream) upstream = s.failure;
          ts.push_back(s.tensor);
        }
        stack.emplace_back(std::move(ts));
        break;
      }
      case ArgTag::kInt: stack.emplace_back(r.get<int64_t>("arg.int")); break;
      case ArgTag::kDouble: stack.emplace_back(r.get<double>("arg.double")); break;
      case ArgTag::kBool: stack.emplace_back(r.get<uint8_t>("arg.bool") != 0); break;
      case ArgTag::kIntList: {
        const uint16_t n = r.get<uint16_t>("arg.int_list.n");
        std::vector<int64_t> v(n);
        for (auto& x : v) x = r.get<int64_t>("arg.int_list.value");
        stack.emplace_back(std::move(v));
        break;
      }
      case ArgTag::kScalarType:
        stack.emplace_back(checked_dtype(r.get<uint8_t>("arg.scalar_type"), "op argument"));
        break;
      case ArgTag::kString: stack.emplace_back(r.get_string("arg.string")); break;
      case ArgTag::kDevice: stack.emplace_back(device_); break;
      case ArgTag::kLayout: {
        const uint8_t v = r.get<uint8_t>("arg.layout");
        if (v >= static_cast<uint8_t>(at::Layout::NumOptions)) {
          throw ProtocolError(fmt::format("malformed op: unknown layout {}", static_cast<unsigned>(v)));
        }
        stack.emplace_back(static_cast<at::Layout>(v));
        break;
      }
      case ArgTag::kMemoryFormat: {
        const uint8_t v = r.get<uint8_t>("arg.memory_format");
        if (v >= static_cast<uint8_t>(at::MemoryFormat::NumOptions)) {
          throw ProtocolError(fmt::format("malformed op: unknown memory format {}", static_cast<unsigned>(v)));
        }
        stack.emplace_back(static_cast<at::MemoryFormat>(v));
        break;
      }
      default:
        throw ProtocolError(fmt::format("malformed op: unknown argument tag {}", static_cast<unsigned>(tag)));
    }
  }
  r.expect_end();
  const wire::Ids& ids = m.outs;
  const uint64_t meta_request = m.meta_request;
  const bool report = m.reporter == rank_ && meta_request != 0;

  auto fail_all = [&](std::shared_ptr<const Failure> failure) -> std::optional<std::string> {
    bool marked = false;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i]) fail(ids[i], failure), marked = true;
    }
    if (report) reply_error(meta_request, *failure);
    // Nothing to mark (no outputs, or only inputs written in place): the
    // failure is reported on its own, unless it came with an input (already
    // reported where it began).
    if (!marked && failure != upstream) return failure->op + ": " + failure->message;
    return std::nullopt;
  };
  // Ops that read an error value do not run; their outputs carry the error.
  if (upstream) return fail_all(upstream);
  if (!op.handle) {
    return fail_all(std::make_shared<Failure>(Failure{op.name, "this worker's libtorch has no such op"}));
  }
  // The boxed call reads its arguments from the end of the stack without
  // counting them: too few would make it read before the stack's start.
  if (const size_t want = op.handle->schema().arguments().size(); stack.size() != want) {
    return fail_all(std::make_shared<Failure>(
        Failure{op.name, fmt::format("{} arguments where this worker's libtorch expects {}", stack.size(), want)}));
  }
  try {
    op.handle->callBoxed(stack);
  } catch (const std::exception& e) {
    return fail_all(std::make_shared<Failure>(
        Failure{op.name, fmt::format("{} (arguments {})", message_of(e), describe_args(m.args))}));
  }
  std::vector<at::Tensor> outs;
  size_t k = 0;
  auto take = [&](const at::Tensor& t) {
    if (k >= ids.size()) throw ProtocolError(fmt::format("{} produced more outputs than the {} expected", op.name, ids.size()));
    if (ids[k]) store(ids[k], t);
    if (report) outs.push_back(t);
    ++k;
  };
  for (const auto& v : stack) {
    if (v.isTensor()) {
      take(v.toTensor());
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) take(t);
    }
  }
  stack.clear();  // keeps its capacity, drops its references
  if (report) reply_metas(meta_request, outs);
  return std::nullopt;
}

// The tensor arguments of an op frame, described for an error message (read
// again from the frame: the stack is gone by the time an op has failed).
std::string Tensors::describe_args(const wire::OpArgs& args) const {
  Reader r(args.data, args.size, "op");
  const uint16_t nargs = r.get<uint16_t>("op.nargs");
  std::vector<std::string> parts;
  for (uint16_t i = 0; i < nargs; ++i) {
    const Reader before = r;
    const auto tag = static_cast<ArgTag>(r.get<uint8_t>("arg.tag"));
    if (tag == ArgTag::kTensor) {
      parts.push_back(describe(slot(r.get<uint64_t>("arg.tensor")).tensor));
    } else if (tag == ArgTag::kTensorList) {
      const uint16_t n = r.get<uint16_t>("arg.tensor_list.n");
      std::vector<std::string> items;
      for (uint16_t k = 0; k < n; ++k) items.push_back(describe(slot(r.get<uint64_t>("arg.tensor_list.id")).tensor));
      parts.push_back(fmt::format("[{}]", fmt::join(items, ", ")));
    } else {
      r = before;
      wire::skip_arg(r);
    }
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

wire::Failed Tensors::error_reply(uint64_t request, const Failure& f) {
  wire::Failed rep;
  rep.request = request;
  rep.op = f.op;
  rep.message = f.message;
  rep.peers = f.peers;
  rep.value = f.origin;
  return rep;
}

void Tensors::reply_error(uint64_t request, const Failure& f) { out_.send_now(error_reply(request, f)); }

void Tensors::reply_metas(uint64_t request, const std::vector<at::Tensor>& outs) {
  wire::MetaReply rep;
  rep.request = request;
  for (const auto& t : outs) rep.metas.push_back(wire::Meta::of(t).to_wire());
  out_.send_now(rep);
}

void Tensors::free(const wire::Free& m) {
  for (size_t i = 0; i < m.ids.size(); ++i) table_.erase(m.ids[i]);
}

void Tensors::fetch(const wire::Fetch& m) {
  const Slot& s = use(m.id);
  if (s.failure) return reply_error(m.request, *s.failure);
  if (gpu_ && s.tensor.is_cuda()) {
    // The copy runs behind the work already issued; the reply goes out from
    // the GPU's completion thread, and this stream moves on meanwhile.
    const uint64_t request = m.request;
    Outbox* out = &out_;
    try {
      gpu_->copy_to_host(s.tensor, [out, request](const at::Tensor& host, std::exception_ptr error) {
        if (error) {
          // A failed communicator names its members: the controller turns
          // that into WorkerLost when one of them is gone.
          try {
            std::rethrow_exception(error);
          } catch (const CommFailure& e) {
            return out->send(error_reply(request, Failure{"fetch", e.what(), e.peers}));
          } catch (const std::exception& e) {
            return out->send(error_reply(request, Failure{"fetch", message_of(e)}));
          }
        }
        out->send_tensor(request, host, Outbox::Hold::kBorrow);  // a copy of its own: nothing to wait for
      });
    } catch (const std::exception& e) {
      reply_error(m.request, Failure{"fetch", message_of(e)});
    }
    return;
  }
  at::Tensor c;
  try {
    c = s.tensor.detach().contiguous().cpu();
  } catch (const std::exception& e) {
    return reply_error(m.request, Failure{"fetch", message_of(e)});
  }
  // Ops after this fetch may write the tensor in place: a copy of its own,
  // or (when it is the table's) the stream waits until it is sent.
  const bool own = !s.tensor.defined() || c.storage().data() != s.tensor.storage().data();
  out_.send_tensor(m.request, c, own ? Outbox::Hold::kBorrow : Outbox::Hold::kWait);
}

void Tensors::put(const wire::Put& m) {
  const auto dtype = checked_dtype(m.dtype, "put");
  // The metadata is checked before anything is allocated by it.
  const uint64_t nbytes = shape_bytes(m.sizes, dtype, "put");
  if (nbytes != m.nbytes) {
    throw ProtocolError(fmt::format("put: {} bytes announced for a {}[{}] tensor of {} bytes", m.nbytes,
                                    c10::toString(dtype), fmt::join(m.sizes, ", "), nbytes));
  }
  if (incoming_.count(m.id)) throw ProtocolError(fmt::format("put: tensor {} is already being received", m.id));
  Incoming in;
  in.nbytes = nbytes;
  in.requires_grad = m.requires_grad;
  // Too large a tensor, or no memory for it: an error value, not the end of
  // this worker (its bytes still come, and are dropped).
  if (nbytes > max_tensor_bytes_) {
    in.failure = std::make_shared<Failure>(Failure{
        "put", fmt::format("a {}[{}] tensor of {} bytes exceeds this worker's limit of {} bytes",
                           c10::toString(dtype), fmt::join(m.sizes, ", "), nbytes, max_tensor_bytes_)});
  } else {
    try {
      in.value = at::empty(m.sizes, at::TensorOptions().dtype(dtype));
    } catch (const std::exception& e) {
      in.failure = std::make_shared<Failure>(Failure{"put", message_of(e)});
    }
  }
  if (nbytes == 0) return finish_put(m.id, std::move(in));
  // Ops after the put see the error value at once; the chunks still come.
  if (in.failure) fail(m.id, in.failure);
  incoming_.emplace(m.id, std::move(in));
}

void Tensors::put_data(const wire::PutData& m) {
  auto it = incoming_.find(m.id);
  if (it == incoming_.end()) throw ProtocolError(fmt::format("put_data for tensor {}, which is not being received", m.id));
  Incoming& in = it->second;
  const uint64_t nbytes = in.nbytes;
  if (m.offset != in.received || m.data.size > nbytes - in.received) {
    throw ProtocolError(fmt::format("put_data: {} bytes at offset {} of tensor {} where [{}, {}) was due",
                                    m.data.size, m.offset, m.id, in.received, nbytes));
  }
  if (m.data.size == 0) throw ProtocolError(fmt::format("put_data: an empty chunk of tensor {}", m.id));
  if (in.value.defined()) {
    std::memcpy(static_cast<uint8_t*>(in.value.data_ptr()) + m.offset, m.data.data, m.data.size);
  }
  put_received(m.id, m.data.size);
}

uint8_t* Tensors::put_sink(uint64_t id, uint64_t offset, uint64_t len) {
  auto it = incoming_.find(id);
  if (it == incoming_.end()) return nullptr;
  Incoming& in = it->second;
  if (!in.value.defined() || len == 0 || offset != in.received || len > in.nbytes - in.received) return nullptr;
  return static_cast<uint8_t*>(in.value.data_ptr()) + offset;
}

void Tensors::put_received(uint64_t id, uint64_t len) {
  auto it = incoming_.find(id);
  Incoming& in = it->second;
  in.received += len;
  if (in.received < in.nbytes) return;
  Incoming done = std::move(in);
  incoming_.erase(it);
  finish_put(id, std::move(done));
}

void Tensors::finish_put(uint64_t id, Incoming in) {
  if (in.failure) return fail(id, std::move(in.failure));
  at::Tensor t;
  try {
    t = device_.is_cpu() ? std::move(in.value) : in.value.to(device_);
    if (in.requires_grad) t.requires_grad_(true);
  } catch (const std::exception& e) {
    return fail(id, std::make_shared<Failure>(Failure{"put", message_of(e)}));
  }
  store(id, std::move(t));
}

void Tensors::seed(const wire::Seed& m) {
  at::manual_seed(m.seed + (m.per_rank ? static_cast<uint64_t>(rank_) * 1000003u : 0u));
}

std::optional<std::string> Tensors::backward(const wire::Backward& m) {
  const Slot& s = use(m.id);
  if (s.failure) return "backward from an error value: " + s.failure->op + ": " + s.failure->message;
  std::vector<at::Tensor> grads;
  if (m.grad) {
    const Slot& g = use(m.grad);
    if (g.failure) return "backward with an error value as the gradient: " + g.failure->op + ": " + g.failure->message;
    grads.push_back(g.tensor);
  }
  try {
    torch::autograd::backward({s.tensor}, grads);
  } catch (const std::exception& e) {
    return message_of(e);
  }
  return std::nullopt;
}

void Tensors::grad(const wire::Grad& m) {
  const Slot& s = use(m.id);
  if (s.failure) return fail(m.out, s.failure);
  at::Tensor g = s.tensor.grad();
  if (!g.defined()) {
    return fail(m.out, std::make_shared<Failure>(Failure{
                           "grad", "the tensor has no gradient (does it require grad, and did backward reach it?)"}));
  }
  store(m.out, g);
}

void Tensors::grad_mode(const wire::GradMode& m) { c10::GradMode::set_enabled(m.enabled); }

void Tensors::load_library(const wire::LoadLibrary& m) {
  void* lib = ::dlopen(m.path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* err = ::dlerror();
    return reply_error(m.request, Failure{"load_library", err ? err : "dlopen failed"});
  }
  using TableFn = const remote_detail::Entry* (*)(size_t*);
  auto table = reinterpret_cast<TableFn>(::dlsym(lib, "cox_remote_functions"));
  if (!table) {
    ::dlclose(lib);
    return reply_error(m.request,
                       Failure{"load_library", m.path + " defines no remote functions (no COX_REMOTE_FUNCTION in it)"});
  }
  size_t n = 0;
  const remote_detail::Entry* entries = table(&n);
  for (size_t i = 0; i < n; ++i) remote_[entries[i].name] = entries[i].fn;
  libraries_.push_back(lib);
  out_.send_now(wire::Done{m.request});
}

void Tensors::call_remote(const wire::CallRemote& m) {
  // meta_request == 0: the controller knows the signature and expects
  // exactly max_outputs tensors; otherwise the reporter tells it what came.
  if (m.max_outputs > kMaxRemoteOutputs) {
    throw ProtocolError(fmt::format("call_remote {}: {} outputs (at most {})", m.name, m.max_outputs, kMaxRemoteOutputs));
  }
  const bool known = m.meta_request == 0;
  const bool report = !known && m.reporter == rank_;
  auto failed = [&](const Failure& f) {
    if (report) reply_error(m.meta_request, f);
    if (known) {
      auto shared = std::make_shared<Failure>(f);
      for (uint32_t i = 0; i < m.max_outputs; ++i) fail(m.out_base + i, shared);
    }
  };
  auto it = remote_.find(m.name);
  if (it == remote_.end()) return failed(Failure{m.name, "no remote function of that name is loaded"});
  std::vector<at::Tensor> inputs;
  for (uint64_t id : m.inputs) {
    const Slot& s = use(id);
    if (s.failure) return failed(*s.failure);
    inputs.push_back(s.tensor);
  }
  std::vector<at::Tensor> outs;
  try {
    outs = it->second(inputs, m.scalars);
  } catch (const std::exception& e) {
    return failed(Failure{m.name, message_of(e)});
  }
  if (known ? outs.size() != m.max_outputs : outs.size() > m.max_outputs) {
    return failed(Failure{m.name, fmt::format("returned {} tensors where {} {} expected", outs.size(),
                                              known ? "exactly" : "at most", m.max_outputs)});
  }
  for (size_t i = 0; i < outs.size(); ++i) store(m.out_base + i, outs[i]);
  if (report) reply_metas(m.meta_request, outs);
}

void Tensors::stats(const wire::Stats& m) {
  out_.send_now(wire::StatsReply{m.request, static_cast<int64_t>(table_.size())});
}

}  // namespace cox::worker
