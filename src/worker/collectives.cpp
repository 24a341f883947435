// The worker's side of collectives and point-to-point transfers: tensors in
// and out of the tensor table, placeholders for error values, and the
// communicators (Gloo on CPU).
#include "worker/tensors.hpp"

#include "common/check.hpp"

#ifdef COX_HAVE_GLOO
#include "collectives/gloo.hpp"
#endif
#ifdef COX_HAVE_NCCL
#include "collectives/nccl.hpp"
#endif

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace cox::worker {

using collectives::CommError;
using collectives::DataType;
using collectives::ReduceOp;
using wire::CollectiveKind;

namespace {

std::optional<DataType> comm_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DataType::kFloat32;
    case at::kDouble: return DataType::kFloat64;
    case at::kHalf: return DataType::kFloat16;
    case at::kBFloat16: return DataType::kBFloat16;
    case at::kLong: return DataType::kInt64;
    case at::kInt: return DataType::kInt32;
    case at::kChar: return DataType::kInt8;
    case at::kByte: return DataType::kUInt8;
    default: return std::nullopt;
  }
}

const char* kind_name(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::kAllReduce: return "all_reduce";
    case CollectiveKind::kReduceScatter: return "reduce_scatter";
    case CollectiveKind::kAllGather: return "all_gather";
    case CollectiveKind::kAllToAll: return "all_to_all";
    case CollectiveKind::kBroadcast: return "broadcast";
    case CollectiveKind::kBarrier: return "barrier";
  }
  return "collective";
}

std::string shape_string(c10::IntArrayRef sizes) { return fmt::format("[{}]", fmt::join(sizes, ", ")); }

}  // namespace

void Tensors::comm_init(const wire::CommInit& m) {
  // Communicator ids are unique (0: none); members are distinct global ranks.
  if (m.comm != 0 && comms_.count(m.comm)) {
    throw ProtocolError(fmt::format("comm_init {}: that communicator is already set up", m.comm));
  }
  if (m.comm == 0 && (m.parent == 0 || !m.ranks.empty())) {
    throw ProtocolError(fmt::format("comm_init 0 (from parent {}) with {} members: id 0 names no communicator",
                                    m.parent, m.ranks.size()));
  }
  {
    std::vector<int32_t> sorted = m.ranks;
    std::sort(sorted.begin(), sorted.end());
    if (!sorted.empty() && sorted.front() < 0) {
      throw ProtocolError(fmt::format("comm_init {}: negative member rank {}", m.comm, sorted.front()));
    }
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      throw ProtocolError(fmt::format("comm_init {}: members [{}] repeat a rank", m.comm, fmt::join(m.ranks, ", ")));
    }
  }
  collectives::CommOptions options;
  options.timeout = std::chrono::milliseconds(m.timeout_ms);
  comm_timeout_ = options.timeout;
  if (m.parent != 0) {
    // A split: every member of the parent takes part, members of no new
    // group too (they get no communicator).
    auto parent = comms_.find(m.parent);
    if (parent == comms_.end()) throw ProtocolError(fmt::format("comm_init {}: split from communicator {}, which was never set up", m.comm, m.parent));
    const auto me = std::find(m.ranks.begin(), m.ranks.end(), rank_);
    if (m.comm != 0 && me == m.ranks.end()) {
      throw ProtocolError(fmt::format("comm_init {}: rank {} is not among its members", m.comm, rank_));
    }
    Comm* c = m.comm ? &comms_[m.comm] : nullptr;
    if (c) c->ranks = m.ranks;
    try {
      if (!parent->second.comm) throw CommError(parent->second.error);
#ifdef COX_HAVE_NCCL
      std::lock_guard<std::mutex> lk(watch_->mu);
      // Groups split in one call have distinct colors: their ids.
      auto made = collectives::split_nccl(*parent->second.comm, c ? static_cast<int>(m.comm & 0x3fffffff) : -1,
                                          c ? static_cast<int>(me - m.ranks.begin()) : 0, options);
      if (c) c->comm = std::move(made);
#else
      throw CommError("this build has no NCCL");
#endif
    } catch (const std::exception& e) {
      if (c) {
        c->comm.reset();
        c->error = e.what();
      }
    }
    if (c && c->comm) {
      watch(c->comm.get(), c->ranks);
      track(c->comm.get(), c->ranks);
    }
    return;
  }
  Comm& c = comms_[m.comm];
  c.ranks = m.ranks;
  const auto me = std::find(m.ranks.begin(), m.ranks.end(), rank_);
  if (me == m.ranks.end()) {
    throw ProtocolError(fmt::format("comm_init {}: rank {} is not among its members", m.comm, rank_));
  }
  const int index = static_cast<int>(me - m.ranks.begin());
  auto exchange = [&](const std::string& blob) {
    return hooks_.rendezvous(m.comm, blob, std::chrono::milliseconds(m.timeout_ms));
  };
  try {
    if (hooks_.connect) {
      c.comm = hooks_.connect(index, static_cast<int>(m.ranks.size()), options, exchange);
      if (!c.comm) throw CommError("no communicator");
      track(c.comm.get(), c.ranks);
    } else if (device_.is_cpu()) {
#ifdef COX_HAVE_GLOO
      std::string host;
      try {
        host = hooks_.gloo_hostname ? hooks_.gloo_hostname(m.hosts) : std::string("127.0.0.1");
      } catch (const std::exception&) {
        exchange("");  // the rest of the group still gets its answer
        throw;
      }
      auto& device = gloo_devices_[host];
      if (!device) device = collectives::make_gloo_device(host);
      c.comm = collectives::make_gloo(device, index, static_cast<int>(m.ranks.size()), options);
      track(c.comm.get(), c.ranks);
      collectives::connect_gloo(*c.comm, exchange);
#else
      // Still take part in the rendezvous, so that it completes for the rest.
      exchange("");
      throw CommError("this build has no Gloo, so CPU workers cannot run collectives (configure with COX_GLOO=ON)");
#endif
    } else if (device_.is_cuda() && gpu_) {
#ifdef COX_HAVE_NCCL
      c.comm = collectives::connect_nccl(device_.index(), static_cast<cudaStream_t>(gpu_->comm_stream()), index,
                                         static_cast<int>(m.ranks.size()), options, exchange);
      watch(c.comm.get(), c.ranks);
      track(c.comm.get(), c.ranks);
#else
      exchange("");
      throw CommError("this build has no NCCL, so CUDA workers cannot run collectives");
#endif
    } else {
      exchange("");
      throw CommError(fmt::format("no collective backend for device {} in this worker", device_.str()));
    }
  } catch (const std::exception& e) {
    untrack(c.comm.get());
    c.comm.reset();
    c.error = e.what();
  }
}

std::optional<std::string> Tensors::collective(const wire::Collective& m) {
  const char* name = kind_name(m.kind);
  const auto dtype = checked_dtype(m.dtype, name);
  if (m.reduce > collectives::kMaxReduceOp) {
    throw ProtocolError(fmt::format("{}: unknown reduce op {}", name, static_cast<unsigned>(m.reduce)));
  }
  if (m.kind != CollectiveKind::kBarrier && !m.in) throw ProtocolError(fmt::format("{} without an input", name));
  if (m.in && !comm_type(dtype)) {
    // The controller rejects these; a worker still must not leave its peers waiting.
    throw ProtocolError(fmt::format("{} of a {} tensor", name, c10::toString(dtype)));
  }
  bounded_bytes(m.sizes, dtype, name);
  if (m.comm == 0) {
    // A group of one: the result is a copy of the input.
    if (m.kind == CollectiveKind::kBarrier || !m.out) return std::nullopt;
    const Slot& s = use(m.in);
    if (s.failure) {
      fail(m.out, s.failure);
    } else {
      try {
        store(m.out, s.tensor.detach().clone(at::MemoryFormat::Contiguous));
      } catch (const std::exception& e) {
        fail(m.out, std::make_shared<Failure>(Failure{name, e.what()}));
      }
    }
    return std::nullopt;
  }
  auto it = comms_.find(m.comm);
  if (it == comms_.end()) throw ProtocolError(fmt::format("collective on communicator {}, which was never set up", m.comm));
  Comm& c = it->second;
  // Dims and roots as the controller normalised them; peers that ran the
  // collective must not wait for a rank that refused it, so these are
  // protocol errors, checked before anything starts.
  {
    const auto ndim = static_cast<int64_t>(m.sizes.size());
    const auto members = static_cast<int64_t>(c.ranks.size());
    auto dim = [&](int64_t d, const char* what) {
      if (d < 0 || d >= ndim) {
        throw ProtocolError(fmt::format("{}: {} {} out of range for a tensor of {} dims", name, what, d, ndim));
      }
    };
    auto divisible = [&](int64_t d) {
      if (m.sizes[static_cast<size_t>(d)] % members != 0) {
        throw ProtocolError(fmt::format("{}: dim {} of size {} does not split among {} members", name, d,
                                        m.sizes[static_cast<size_t>(d)], members));
      }
    };
    switch (m.kind) {
      case CollectiveKind::kReduceScatter: dim(m.a, "dim"), divisible(m.a); break;
      case CollectiveKind::kAllGather: {
        dim(m.a, "dim");
        std::vector<int64_t> out_sizes = m.sizes;
        if (members && out_sizes[static_cast<size_t>(m.a)] > std::numeric_limits<int64_t>::max() / members) {
          throw ProtocolError(fmt::format("{}: the gathered tensor overflows", name));
        }
        out_sizes[static_cast<size_t>(m.a)] *= members;
        bounded_bytes(out_sizes, dtype, name);
        break;
      }
      case CollectiveKind::kAllToAll: dim(m.a, "split dim"), dim(m.b, "concat dim"), divisible(m.a); break;
      case CollectiveKind::kBroadcast:
        if (m.a < 0 || m.a >= members) {
          throw ProtocolError(fmt::format("{}: root {} out of range for {} members", name, m.a, members));
        }
        break;
      case CollectiveKind::kAllReduce:
      case CollectiveKind::kBarrier: break;
    }
  }

  auto fail_output = [&](std::shared_ptr<const Failure> f) -> std::optional<std::string> {
    if (m.out) {
      fail(m.out, std::move(f));
    } else if (m.in) {
      fail(m.in, std::move(f));
    } else {
      return f->op + ": " + f->message;
    }
    return std::nullopt;
  };
  if (!c.comm) return fail_output(std::make_shared<Failure>(Failure{name, c.error, c.ranks}));

  // The input, or a placeholder of the shape the controller knows.
  std::shared_ptr<const Failure> upstream;
  at::Tensor in;
  if (m.in) {
    const Slot& s = use(m.in);
    if (s.failure) {
      upstream = s.failure;
    } else if (!s.tensor.defined() || s.tensor.sizes() != c10::IntArrayRef(m.sizes) || s.tensor.scalar_type() != dtype) {
      upstream = std::make_shared<Failure>(Failure{
          name, fmt::format("the shard is {}{} where the controller expected {}{}", c10::toString(s.tensor.scalar_type()),
                            shape_string(s.tensor.sizes()), c10::toString(dtype), shape_string(m.sizes))});
    } else {
      in = s.tensor;
    }
    if (!in.defined()) {
      try {
        in = at::zeros(m.sizes, at::TensorOptions().dtype(dtype).device(device_));
      } catch (const std::exception& e) {
        // No placeholder, no part in the collective: the peers would wait in vain.
        throw Error(fmt::format("{}: cannot make a placeholder of {}{}: {}", name, c10::toString(dtype),
                                shape_string(m.sizes), e.what()));
      }
    }
  }
  const auto type = comm_type(dtype);
  collectives::Communicator& comm = *c.comm;
  const int64_t n = comm.size();
  const auto reduce = static_cast<ReduceOp>(m.reduce);

  at::Tensor result;
  std::unique_ptr<collectives::Communicator::StatusExchange> status;
  // Each case calls status->issued() right after its communication call,
  // before anything reads the result.
  auto run = [&] {
    status = comm.start_status_exchange(upstream ? 1 : 0);
    switch (m.kind) {
      case CollectiveKind::kAllReduce: {
        if (m.out) {
          const at::Tensor x = in.contiguous();
          result = at::empty_like(x, at::MemoryFormat::Contiguous);
          comm.all_reduce(x.data_ptr(), result.data_ptr(), static_cast<size_t>(x.numel()), *type, reduce);
          status->issued();
        } else if (in.is_contiguous()) {
          comm.all_reduce(in.data_ptr(), in.data_ptr(), static_cast<size_t>(in.numel()), *type, reduce);
          status->issued();
          result = in;
        } else {
          at::Tensor x = in.contiguous();
          comm.all_reduce(x.data_ptr(), x.data_ptr(), static_cast<size_t>(x.numel()), *type, reduce);
          status->issued();
          in.copy_(x);
          result = in;
        }
        break;
      }
      case CollectiveKind::kReduceScatter: {
        // Blocks along `dim` become the leading dimension: block i is rows
        // [i*k, (i+1)*k) of the moved input.
        const int64_t dim = m.a;
        const at::Tensor x = in.movedim(dim, 0).contiguous();
        std::vector<int64_t> block_sizes = x.sizes().vec();
        block_sizes[0] /= n;
        at::Tensor block = at::empty(block_sizes, x.options());
        comm.reduce_scatter(x.data_ptr(), block.data_ptr(), static_cast<size_t>(block.numel()), *type, reduce);
        status->issued();
        result = block.movedim(0, dim).contiguous();
        break;
      }
      case CollectiveKind::kAllGather: {
        const int64_t dim = m.a;
        const at::Tensor x = in.contiguous();
        std::vector<int64_t> gathered_sizes{n};
        gathered_sizes.insert(gathered_sizes.end(), x.sizes().begin(), x.sizes().end());
        at::Tensor gathered = at::empty(gathered_sizes, x.options());
        comm.all_gather(x.data_ptr(), gathered.data_ptr(), static_cast<size_t>(x.numel()), *type);
        status->issued();
        std::vector<int64_t> out_sizes = x.sizes().vec();
        out_sizes[static_cast<size_t>(dim)] *= n;
        result = gathered.movedim(0, dim).reshape(out_sizes).contiguous();
        break;
      }
      case CollectiveKind::kAllToAll: {
        const int64_t split = m.a, concat = m.b;
        // Block j (of the split dim) goes to member j; block i of what
        // arrives came from member i and is concatenated at position i.
        const at::Tensor x = in.movedim(split, 0).contiguous();
        at::Tensor received = at::empty_like(x);
        comm.all_to_all(x.data_ptr(), received.data_ptr(), static_cast<size_t>(x.numel() / n), *type);
        status->issued();
        if (split == 0 && concat == 0) {  // the blocks arrive in place
          result = received;
          break;
        }
        const std::vector<at::Tensor> parts = received.chunk(n, 0);
        std::vector<at::Tensor> moved;
        moved.reserve(parts.size());
        for (const auto& p : parts) moved.push_back(p.movedim(0, split));
        result = at::cat(moved, concat).contiguous();
        break;
      }
      case CollectiveKind::kBroadcast: {
        const at::Tensor x = in.contiguous();
        result = at::empty_like(x, at::MemoryFormat::Contiguous);
        comm.broadcast(x.data_ptr(), result.data_ptr(), static_cast<size_t>(x.numel()), *type, static_cast<int>(m.a));
        status->issued();
        break;
      }
      case CollectiveKind::kBarrier:
        status->issued();
        comm.barrier();
        break;
    }
  };
  try {
    if (gpu_) {
      // On the communication stream, after the compute work issued so far;
      // the output is used (and the statuses read) when something needs it.
      std::lock_guard<std::mutex> lk(watch_->mu);
      gpu_->comm_after_compute();
      gpu_->comm_uses(in);
      auto done = gpu_->on_comm(run);
      if (m.kind != CollectiveKind::kBarrier) {
        const uint64_t id = m.out ? m.out : m.in;
        if (upstream) return fail_output(upstream);
        auto flight = std::make_shared<InFlight>();
        flight->done = std::move(done);
        flight->status = std::move(status);
        flight->ranks = c.ranks;
        flight->op = name;
        if (m.out) {
          table_[id] = Slot{std::move(result), nullptr, std::move(flight)};
        } else {
          table_[id].in_flight = std::move(flight);
        }
        return std::nullopt;
      }
    } else {
      run();
    }
    const std::vector<uint8_t> statuses = status->finish();
    if (upstream) return fail_output(upstream);
    for (size_t i = 0; i < statuses.size(); ++i) {
      if (statuses[i] == 0) continue;
      auto f = std::make_shared<Failure>(
          Failure{name, fmt::format("the input on worker {} (member {} of the group {}) is an error value; fetch it "
                                    "there for the cause",
                                    c.ranks[i], i, shape_string(std::vector<int64_t>(c.ranks.begin(), c.ranks.end())))});
      f->report = false;  // that worker reported the cause
      return fail_output(std::move(f));
    }
  } catch (const CommError& e) {
    return fail_output(std::make_shared<Failure>(Failure{name, e.what(), c.ranks}));
  } catch (const std::exception& e) {
    // A local failure after the communication (a bad dim the controller
    // would have caught): this rank's output is an error.
    return fail_output(std::make_shared<Failure>(Failure{name, e.what()}));
  }
  if (m.out) store(m.out, std::move(result));
  return std::nullopt;
}

namespace {

// A transfer's status on a GPU: the byte received beside the data, read
// once the compute stream has waited for the receive.
class ReceivedStatus final : public collectives::Communicator::StatusExchange {
 public:
  explicit ReceivedStatus(at::Tensor byte) : byte_(std::move(byte)) {}
  std::vector<uint8_t> finish() override { return {byte_.cpu().item<uint8_t>()}; }

 private:
  at::Tensor byte_;
};

}  // namespace

Tensors::Comm& Tensors::comm_of(uint64_t id) {
  auto it = comms_.find(id);
  if (it == comms_.end()) throw ProtocolError(fmt::format("transfer on communicator {}, which was never set up", id));
  return it->second;
}

void Tensors::check_transfer(const wire::Transfer& m) {
  bounded_bytes(m.sizes, checked_dtype(m.dtype, "to_mesh"), "to_mesh");
  auto peer = [&](uint64_t comm, int32_t p) {
    const Comm& c = comm_of(comm);
    if (p < 0 || static_cast<size_t>(p) >= c.ranks.size()) {
      throw ProtocolError(fmt::format("transfer: peer {} out of range for communicator {} of {} members", p, comm,
                                      c.ranks.size()));
    }
  };
  for (const auto& s : m.sends) peer(s.comm, s.peer);
  if (m.out && m.recv_comm) peer(m.recv_comm, m.recv_peer);
  if (m.out && !m.recv_comm && !m.src) throw ProtocolError("transfer: a local receive without a source");
}

// On GPUs: the sizes are known on both sides, so each send is a status byte
// and the data (zeros when the source is an error value), all sends and the
// receive in one NCCL group, on the communication stream.
std::optional<std::string> Tensors::transfer_gpu(const wire::Transfer& m) {
  const auto dtype = static_cast<at::ScalarType>(m.dtype);
  const auto options = at::TensorOptions().dtype(dtype).device(device_);
  std::shared_ptr<const Failure> upstream;
  at::Tensor src;
  if (m.src) {
    const Slot& s = use(m.src);
    upstream = s.failure;
    src = s.tensor;
  }
  if (m.out && m.recv_comm == 0) {
    if (!m.src) throw ProtocolError("transfer: a local receive without a source");
    if (upstream) {
      fail(m.out, upstream);
    } else {
      store(m.out, src.contiguous());
    }
  }
  const bool receive = m.out && m.recv_comm != 0;
  Comm* rc = receive ? &comm_of(m.recv_comm) : nullptr;
  const int32_t peer_rank = receive ? rc->ranks.at(static_cast<size_t>(m.recv_peer)) : -1;
  if (m.sends.empty() && !receive) return std::nullopt;

  std::lock_guard<std::mutex> lk(watch_->mu);
  std::string send_error, recv_error;
  at::Tensor out, status_in;
  std::shared_ptr<const Gpu::Event> done;
  try {
    gpu_->comm_after_compute();
    gpu_->comm_uses(src);
    done = gpu_->on_comm([&] {
      at::Tensor data, status_out;
      if (!m.sends.empty()) {
        data = upstream ? at::zeros(m.sizes, options) : src.contiguous();
        status_out = at::full({1}, upstream ? 1 : 0, options.dtype(at::kByte));
      }
      if (receive) {
        out = at::empty(m.sizes, options);
        status_in = at::empty({1}, options.dtype(at::kByte));
      }
      collectives::Communicator* first = nullptr;
      for (const auto& snd : m.sends) {
        Comm& c = comm_of(snd.comm);
        if (c.comm && !first) first = c.comm.get();
      }
      if (!first && rc && rc->comm) first = rc->comm.get();
      if (!first) return;
      first->begin_group();  // NCCL groups span communicators
      for (const auto& snd : m.sends) {
        Comm& c = comm_of(snd.comm);
        try {
          if (!c.comm) throw CommError(c.error);
          c.comm->start_send(status_out.data_ptr(), 1, snd.peer, m.tag * 2);
          if (data.nbytes()) c.comm->start_send(data.data_ptr(), data.nbytes(), snd.peer, m.tag * 2 + 1);
        } catch (const std::exception& e) {
          send_error = e.what();
        }
      }
      if (receive) {
        try {
          if (!rc->comm) throw CommError(rc->error);
          rc->comm->start_recv(status_in.data_ptr(), 1, m.recv_peer, m.tag * 2);
          if (out.nbytes()) rc->comm->start_recv(out.data_ptr(), out.nbytes(), m.recv_peer, m.tag * 2 + 1);
        } catch (const std::exception& e) {
          recv_error = e.what();
        }
      }
      first->end_group();
    });
  } catch (const std::exception& e) {
    if (send_error.empty()) send_error = e.what();
    if (recv_error.empty()) recv_error = e.what();
  }
  if (receive) {
    if (!recv_error.empty()) {
      fail(m.out, std::make_shared<Failure>(Failure{"to_mesh", recv_error, {peer_rank}}));
    } else {
      auto flight = std::make_shared<InFlight>();
      flight->done = done;
      flight->status = std::make_unique<ReceivedStatus>(status_in);
      flight->ranks = {peer_rank};
      flight->op = "to_mesh";
      table_[m.out] = Slot{std::move(out), nullptr, std::move(flight)};
    }
  }
  if (!send_error.empty()) return "to_mesh (sending): " + send_error;
  return std::nullopt;
}

// Each message is a 16-byte header (status: 0, or the length of an error
// text; payload bytes), then the payload: the tensor's bytes, or the text.
std::optional<std::string> Tensors::transfer(const wire::Transfer& m) {
  check_transfer(m);
  if (gpu_) return transfer_gpu(m);
  const auto dtype = static_cast<at::ScalarType>(m.dtype);
  std::shared_ptr<const Failure> upstream;
  at::Tensor src;
  if (m.src) {
    const Slot& s = use(m.src);
    upstream = s.failure;
    src = s.tensor;
  }

  // Sends start first, so that two workers that swap shards cannot wait on
  // each other.
  struct Header {
    uint64_t status = 0;
    uint64_t bytes = 0;
  } header;
  std::string error_text;
  at::Tensor data;
  if (m.src) {
    if (upstream) {
      error_text = upstream->op + ": " + upstream->message;
      if (error_text.size() > kMaxErrorText) error_text.resize(kMaxErrorText);
      header.status = error_text.size();
      header.bytes = error_text.size();
    } else {
      try {
        data = src.contiguous();
      } catch (const std::exception& e) {
        // Sent as an error value: the receivers still hear from this rank.
        error_text = std::string("to_mesh: ") + e.what();
        header.status = error_text.size();
        upstream = std::make_shared<Failure>(Failure{"to_mesh", e.what()});
      }
      header.bytes = upstream ? error_text.size() : static_cast<uint64_t>(data.nbytes());
    }
  }
  std::vector<std::unique_ptr<collectives::Communicator::Transfer>> sends;
  std::string send_error;
  for (const auto& s : m.sends) {
    Comm& c = comm_of(s.comm);
    try {
      if (!c.comm) throw CommError(c.error);
      c.comm->begin_group();
      sends.push_back(c.comm->start_send(&header, sizeof header, s.peer, m.tag * 2));
      if (header.bytes) {
        const void* p = upstream ? static_cast<const void*>(error_text.data()) : data.data_ptr();
        sends.push_back(c.comm->start_send(p, header.bytes, s.peer, m.tag * 2 + 1));
      }
      c.comm->end_group();
    } catch (const std::exception& e) {
      send_error = e.what();
    }
  }

  if (m.out && m.recv_comm == 0) {
    // This worker is on both sides at the same coordinate: it keeps its shard.
    if (!m.src) throw ProtocolError("transfer: a local receive without a source");
    if (upstream) {
      fail(m.out, upstream);
    } else {
      store(m.out, src.contiguous());
    }
  } else if (m.out) {
    Comm& c = comm_of(m.recv_comm);
    const int32_t peer_rank = c.ranks.at(static_cast<size_t>(m.recv_peer));
    try {
      if (!c.comm) throw CommError(c.error);
      Header h;
      c.comm->start_recv(&h, sizeof h, m.recv_peer, m.tag * 2)->wait();
      if (h.status) {
        if (h.bytes > kMaxErrorText || h.bytes != h.status) {
          throw CommError(fmt::format("worker {} announced an error text of {} bytes", peer_rank, h.bytes));
        }
        std::string text(h.bytes, '\0');
        c.comm->start_recv(text.data(), text.size(), m.recv_peer, m.tag * 2 + 1)->wait();
        auto f = std::make_shared<Failure>(
            Failure{"to_mesh", fmt::format("the shard sent by worker {} is an error value: {}", peer_rank, text)});
        f->report = false;  // the sender reported the cause
        fail(m.out, std::move(f));
      } else {
        at::Tensor out = at::empty(m.sizes, at::TensorOptions().dtype(dtype).device(device_));
        if (h.bytes != static_cast<uint64_t>(out.nbytes())) {
          throw CommError(fmt::format("worker {} sent {} bytes for a {}{} shard of {} bytes", peer_rank, h.bytes,
                                      c10::toString(dtype), shape_string(m.sizes), out.nbytes()));
        }
        if (h.bytes) c.comm->start_recv(out.data_ptr(), h.bytes, m.recv_peer, m.tag * 2 + 1)->wait();
        store(m.out, std::move(out));
      }
    } catch (const std::exception& e) {
      fail(m.out, std::make_shared<Failure>(Failure{"to_mesh", e.what(), {peer_rank}}));
    }
  }
  for (auto& s : sends) {
    try {
      s->wait();
    } catch (const std::exception& e) {
      if (send_error.empty()) send_error = e.what();
    }
  }
  if (!send_error.empty()) return "to_mesh (sending): " + send_error;
  return std::nullopt;
}

}  // namespace cox::worker
