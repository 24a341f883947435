// The NCCL communicator.
#include "collectives/nccl.hpp"

#include <nccl.h>

#include <cstring>
#include <memory>
#include <vector>
#include <string>
#include <thread>

namespace cox::collectives {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::kFloat32: return ncclFloat32;
    case DataType::kFloat64: return ncclFloat64;
    case DataType::kFloat16: return ncclFloat16;
    case DataType::kBFloat16: return ncclBfloat16;
    case DataType::kInt64: return ncclInt64;
    case DataType::kInt32: return ncclInt32;
    case DataType::kInt8: return ncclInt8;
    case DataType::kUInt8: return ncclUint8;
  }
  throw CommError("unknown data type");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kProduct: return ncclProd;
  }
  throw CommError("unknown reduce op");
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CommError(std::string(what) + ": " + cudaGetErrorString(e));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream, int rank, int size, const CommOptions& o)
      : Communicator(rank, size), comm_(comm), device_(device), stream_(stream), timeout_(o.timeout) {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaMalloc(&scratch_, kStatusBytes * (kStatusSlots + 1)), "cudaMalloc");
    check_cuda(cudaMallocHost(&host_, kStatusBytes * kStatusSlots), "cudaMallocHost");
  }
  ~NcclCommunicator() override {
    if (comm_) {
      if (broken_.empty()) {
        ncclCommFinalize(comm_);
        wait_ready(nullptr, /*throw_on_timeout=*/false);
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    cudaFree(scratch_);
    cudaFreeHost(host_);
  }

  const char* backend() const noexcept override { return "nccl"; }
  ncclComm_t comm() const noexcept { return comm_; }
  int device() const noexcept { return device_; }
  // A collective call on this communicator failed elsewhere (a split):
  // abort it, so that nothing waits on it again.
  void abort(const std::string& why) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    if (broken_.empty()) broken_ = why;
  }
  cudaStream_t stream() const noexcept { return stream_; }
  void check_async_error() {
    if (!comm_) throw CommError(broken_.empty() ? std::string("nccl: the communicator was aborted") : broken_);
    if (cancelled()) throw CommError("nccl: " + cancel_reason());
    check_async("collective");
  }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  void all_reduce(const void* in, void* out, size_t count, DataType t, ReduceOp op) override {
    run("all_reduce", [&] { return ncclAllReduce(in, out, count, nccl_type(t), nccl_op(op), comm_, stream_); });
  }
  void reduce_scatter(const void* in, void* out, size_t count, DataType t, ReduceOp op) override {
    run("reduce_scatter",
        [&] { return ncclReduceScatter(in, out, count, nccl_type(t), nccl_op(op), comm_, stream_); });
  }
  void all_gather(const void* in, void* out, size_t count, DataType t) override {
    run("all_gather", [&] { return ncclAllGather(in, out, count, nccl_type(t), comm_, stream_); });
  }
  void all_to_all(const void* in, void* out, size_t count, DataType t) override {
    const size_t block = count * element_size(t);
    run("all_to_all", [&] {
      ncclResult_t r = ncclGroupStart();
      for (int peer = 0; peer < size_ && r == ncclSuccess; ++peer) {
        r = ncclSend(static_cast<const char*>(in) + block * static_cast<size_t>(peer), count, nccl_type(t), peer,
                     comm_, stream_);
        if (r != ncclSuccess && r != ncclInProgress) break;
        r = ncclRecv(static_cast<char*>(out) + block * static_cast<size_t>(peer), count, nccl_type(t), peer, comm_,
                     stream_);
        if (r == ncclInProgress) r = ncclSuccess;
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }
  void broadcast(const void* in, void* out, size_t count, DataType t, int root) override {
    run("broadcast", [&] { return ncclBroadcast(in, out, count, nccl_type(t), root, comm_, stream_); });
  }
  void barrier() override {
    close_status_group(open_slot_);
    run("barrier", [&] { return ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, stream_); });
    synchronize("barrier");
  }

  void begin_group() override {
    guarded("group", [&] { enqueue("ncclGroupStart", [] { return ncclGroupStart(); }); });
  }
  void end_group() override {
    guarded("group", [&] { enqueue("ncclGroupEnd", [] { return ncclGroupEnd(); }); });
  }

  class NcclTransfer final : public Transfer {
   public:
    explicit NcclTransfer(NcclCommunicator& c) : c_(c) {}
    void wait() override { c_.synchronize("send/recv"); }

   private:
    NcclCommunicator& c_;
  };
  // The tag orders nothing here: NCCL matches sends and receives between a
  // pair in the order they are issued, which the controller makes the same
  // on both sides.
  std::unique_ptr<Transfer> start_send(const void* data, size_t bytes, int peer, uint64_t) override {
    run("send", [&] { return ncclSend(data, bytes, ncclUint8, peer, comm_, stream_); });
    return std::make_unique<NcclTransfer>(*this);
  }
  std::unique_ptr<Transfer> start_recv(void* data, size_t bytes, int peer, uint64_t) override {
    run("recv", [&] { return ncclRecv(data, bytes, ncclUint8, peer, comm_, stream_); });
    return std::make_unique<NcclTransfer>(*this);
  }

  // Status bytes gather into device scratch and come back to pinned host
  // memory on the communicator's stream, in one of kStatusSlots slots, so
  // that several collectives may be in flight before anyone reads their
  // statuses. A slot still unread when its turn comes round again is read
  // first (after waiting for the stream).
  static constexpr int kStatusSlots = 64;
  static constexpr int kStatusBytes = 64;  // per slot: mine, then one per rank
  struct StatusSlot {
    std::vector<uint8_t> bytes;
    bool done = false;
  };
  class NcclStatus final : public StatusExchange {
   public:
    NcclStatus(NcclCommunicator& c, int slot, std::shared_ptr<StatusSlot> state)
        : c_(c), slot_(slot), state_(std::move(state)) {}
    void issued() override { c_.close_status_group(slot_); }
    std::vector<uint8_t> finish() override {
      if (!state_->done) {
        c_.close_status_group(slot_);
        c_.settle(slot_);
      }
      return state_->bytes;
    }

   private:
    NcclCommunicator& c_;
    const int slot_;
    std::shared_ptr<StatusSlot> state_;
  };
  // The status all_gather opens an NCCL group that the collective joins;
  // issued() closes it and queues the copy back.
  std::unique_ptr<StatusExchange> start_status_exchange(uint8_t mine) override {
    if (size_ + 1 > kStatusBytes) throw CommError("status exchange supports at most 63 ranks per NCCL group");
    close_status_group(open_slot_);
    const int slot = next_slot_;
    next_slot_ = (next_slot_ + 1) % kStatusSlots;
    if (slots_[slot] && !slots_[slot]->done) settle(slot);
    auto state = std::make_shared<StatusSlot>();
    slots_[slot] = state;
    guarded("status exchange", [&] {
      auto* h = static_cast<uint8_t*>(host_) + slot * kStatusBytes;
      auto* d = static_cast<char*>(scratch_) + kStatusBytes + slot * kStatusBytes;
      h[0] = mine;
      check_cuda(cudaSetDevice(device_), "cudaSetDevice");
      check_cuda(cudaMemcpyAsync(d, h, 1, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
      enqueue("ncclGroupStart", [] { return ncclGroupStart(); });
      open_slot_ = slot;
      enqueue("status exchange", [&] { return ncclAllGather(d, d + 1, 1, ncclUint8, comm_, stream_); });
    });
    return std::make_unique<NcclStatus>(*this, slot, std::move(state));
  }
  void close_status_group(int slot) {
    if (slot < 0 || slot != open_slot_) return;
    open_slot_ = -1;
    guarded("status exchange", [&] {
      enqueue("ncclGroupEnd", [] { return ncclGroupEnd(); });
      auto* h = static_cast<uint8_t*>(host_) + slot * kStatusBytes;
      auto* d = static_cast<char*>(scratch_) + kStatusBytes + slot * kStatusBytes;
      check_cuda(cudaMemcpyAsync(h + 1, d + 1, static_cast<size_t>(size_), cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync");
    });
  }
  // Reads slot `slot` once the stream has passed its copy back.
  void settle(int slot) {
    close_status_group(slot);
    synchronize("status exchange");
    const auto* h = static_cast<const uint8_t*>(host_) + slot * kStatusBytes;
    slots_[slot]->bytes.assign(h + 1, h + 1 + size_);
    slots_[slot]->done = true;
  }

  // Waits for the stream, polling NCCL for errors; aborts past the timeout.
  void synchronize(const char* what) {
    close_status_group(open_slot_);
    guarded(what, [&] {
      const auto deadline = Clock::now() + timeout_;
      for (;;) {
        const cudaError_t q = cudaStreamQuery(stream_);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) check_cuda(q, "cudaStreamQuery");
        check_async(what);
        if (cancelled()) {
          // A member was lost (cancel() came from another thread): what
          // waits on it on the device ends only by an abort.
          ncclCommAbort(comm_);
          comm_ = nullptr;
          throw CommError(std::string("nccl ") + what + ": " + cancel_reason() + "; the communicator was aborted");
        }
        if (Clock::now() > deadline) {
          ncclCommAbort(comm_);
          comm_ = nullptr;
          throw CommError(std::string("nccl ") + what + ": timed out after " + std::to_string(timeout_.count()) +
                          " ms (a peer is gone or stuck); the communicator was aborted");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    });
  }

  // Non-blocking communicators may return ncclInProgress: wait until the
  // communicator is ready, within the timeout.
  void wait_ready(const char* what, bool throw_on_timeout = true) {
    const auto deadline = Clock::now() + timeout_;
    for (;;) {
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        if (!what) return;
        throw CommError(std::string("nccl ") + what + ": " + ncclGetErrorString(state) + " (" +
                        ncclGetLastError(comm_) + ")");
      }
      if (cancelled() && what) throw CommError(std::string("nccl ") + what + ": " + cancel_reason());
      if (Clock::now() > deadline) {
        if (!throw_on_timeout) return;
        throw CommError(std::string("nccl ") + (what ? what : "") + ": timed out waiting for the communicator");
      }
      std::this_thread::yield();
    }
  }

 private:
  void check_async(const char* what) {
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(comm_, &state);
    if (state != ncclSuccess && state != ncclInProgress) {
      throw CommError(std::string("nccl ") + what + ": " + ncclGetErrorString(state) + " (" +
                      ncclGetLastError(comm_) + ")");
    }
  }
  template <class F>
  void enqueue(const char* what, F&& f) {
    const ncclResult_t r = f();
    if (r == ncclInProgress) return wait_ready(what);
    if (r != ncclSuccess) {
      throw CommError(std::string("nccl ") + what + ": " + ncclGetErrorString(r) + " (" + ncclGetLastError(comm_) +
                      ")");
    }
  }
  template <class F>
  void run(const char* what, F&& f) {
    guarded(what, [&] {
      check_cuda(cudaSetDevice(device_), "cudaSetDevice");
      enqueue(what, f);
    });
  }

  ncclComm_t comm_;
  const int device_;
  cudaStream_t stream_;
  std::chrono::milliseconds timeout_;
  void* scratch_ = nullptr;  // device: barrier word, then the status slots
  void* host_ = nullptr;     // pinned: the status slots
  std::shared_ptr<StatusSlot> slots_[kStatusSlots];
  int next_slot_ = 0;
  int open_slot_ = -1;  // the slot whose NCCL group is still open
};

ncclConfig_t make_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a stuck set-up or collective can be aborted
  return config;
}

// Waits for a non-blocking init or split, aborting past the deadline.
void wait_init(ncclComm_t comm, ncclResult_t r, const CommOptions& o, const char* what) {
  const auto deadline = Clock::now() + o.timeout;
  while (r == ncclInProgress || r == ncclSuccess) {
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(comm, &state);
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) {
      r = state;
      break;
    }
    if (Clock::now() > deadline) {
      ncclCommAbort(comm);
      throw CommError(std::string("nccl ") + what + ": timed out after " + std::to_string(o.timeout.count()) +
                      " ms waiting for the group's members");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  const std::string detail = comm ? ncclGetLastError(comm) : "";
  if (comm) ncclCommAbort(comm);
  throw CommError(std::string("nccl ") + what + ": " + ncclGetErrorString(r) + (detail.empty() ? "" : " (" + detail + ")"));
}

}  // namespace

std::unique_ptr<Communicator> connect_nccl(int device, cudaStream_t stream, int rank, int size,
                                           const CommOptions& options, const Exchange& exchange) {
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  std::string mine;
  if (rank == 0) {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) throw CommError(std::string("ncclGetUniqueId: ") + ncclGetErrorString(r));
    mine.assign(id.internal, sizeof id.internal);
  }
  const std::vector<std::string> all = exchange(mine);
  if (all.empty() || all[0].size() != sizeof(ncclUniqueId::internal)) {
    throw CommError("rendezvous did not deliver member 0's NCCL unique id");
  }
  ncclUniqueId id;
  std::memcpy(id.internal, all[0].data(), sizeof id.internal);
  ncclConfig_t config = make_config();
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  wait_init(comm, r, options, "ncclCommInitRankConfig");
  return std::make_unique<NcclCommunicator>(comm, device, stream, rank, size, options);
}

std::unique_ptr<Communicator> split_nccl(Communicator& parent, int color, int key, const CommOptions& options) {
  auto* p = dynamic_cast<NcclCommunicator*>(&parent);
  if (!p) throw CommError(std::string("split_nccl: the parent is a ") + parent.backend() + " communicator");
  if (!p->broken().empty()) throw CommError(p->broken());
  check_cuda(cudaSetDevice(p->device()), "cudaSetDevice");
  ncclConfig_t config = make_config();
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommSplit(p->comm(), color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &comm, &config);
  try {
    if (r != ncclSuccess && r != ncclInProgress) {
      throw CommError(std::string("nccl ncclCommSplit: ") + ncclGetErrorString(r) + " (" + ncclGetLastError(p->comm()) +
                      ")");
    }
    // Non-blocking: the new communicator's handle is filled in once the
    // parent has finished the split; wait for the parent first.
    p->wait_ready("ncclCommSplit");
    if (color < 0) return nullptr;
    if (!comm) throw CommError("nccl ncclCommSplit: no communicator came back");
    wait_init(comm, ncclInProgress, options, "ncclCommSplit");
  } catch (const CommError& e) {
    p->abort(e.what());
    throw;
  }
  int rank = 0, size = 0;
  ncclCommUserRank(comm, &rank);
  ncclCommCount(comm, &size);
  return std::make_unique<NcclCommunicator>(comm, p->device(), p->stream(), rank, size, options);
}

void check_nccl(Communicator& comm) {
  auto* c = dynamic_cast<NcclCommunicator*>(&comm);
  if (!c) return;
  c->check_async_error();
}

void abort_nccl(Communicator& comm, const std::string& why) {
  if (auto* c = dynamic_cast<NcclCommunicator*>(&comm)) c->abort(why);
}

void synchronize_nccl(Communicator& comm) {
  auto* c = dynamic_cast<NcclCommunicator*>(&comm);
  if (!c) throw CommError(std::string("synchronize_nccl: not an NCCL communicator but ") + comm.backend());
  c->synchronize("synchronize");
}

}  // namespace cox::collectives
