// The worker's half of the tensor engine: a table of tensors (or the errors
// that stand in for them) by id, and the messages that create, run, move and
// free them.
#pragma once

#include "collectives/communicator.hpp"
#include "wire/messages.hpp"
#include "worker/gpu.hpp"
#include "worker/outbox.hpp"

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/flat_hash_map.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace gloo::transport {
class Device;
}

namespace cox::worker {

class Tensors {
 public:
  struct Hooks {
    // Every member's blob for a communicator being set up (through the
    // controller); throws collectives::CommError when the rendezvous fails
    // or no answer comes within `timeout`.
    std::function<std::vector<std::string>(uint64_t comm, const std::string& blob, std::chrono::milliseconds timeout)>
        rendezvous;
    // The address Gloo listens on for a group whose members' hosts (as the
    // controller sees them) are `hosts`: one they can all reach. Throws
    // collectives::CommError when it cannot tell.
    std::function<std::string(const std::vector<std::string>& hosts)> gloo_hostname;
    // Makes the communicator of a new group (this worker is member `index`
    // of `size`); unset: Gloo on a CPU, NCCL on a GPU. Tests and the fuzz
    // harness put an in-process one here.
    std::function<std::unique_ptr<collectives::Communicator>(int index, int size, const collectives::CommOptions&,
                                                             const collectives::Exchange&)>
        connect;
    // The largest tensor a message may make this worker allocate by its
    // metadata alone (a put, a collective's placeholder, a received shard);
    // 0: this machine's physical memory. A put above it becomes an error
    // value; anything else above it is a protocol error.
    uint64_t max_tensor_bytes = 0;
  };
  // Ids, counts and enums from the controller's stream, before they are used.
  static constexpr uint32_t kMaxOpId = uint32_t{1} << 20;      // op table entries
  static constexpr uint32_t kMaxRemoteOutputs = uint32_t{1} << 16;
  static constexpr uint64_t kMaxErrorText = uint64_t{1} << 20;  // from a peer, in a transfer
  // A CUDA `device` binds this process to it (throws cox::Error when it
  // cannot); then ops run on a compute stream and collectives on their own.
  // Replies go out through `out`.
  Tensors(int rank, at::Device device, Outbox& out, Hooks hooks);
  ~Tensors();

  const at::Device& device() const noexcept { return device_; }
  // Waits for the device's work (for a sync); returns why it failed.
  std::optional<std::string> synchronize();

  void define_op(const wire::DefineOp& m);
  // An op with no outputs (one that only writes its inputs) has nothing to
  // mark when it fails: its failure is returned, to be reported.
  std::optional<std::string> run_op(const wire::Op& m);
  void free(const wire::Free& m);
  void fetch(const wire::Fetch& m);
  // A tensor from the controller: its header, then its chunks.
  void put(const wire::Put& m);
  void put_data(const wire::PutData& m);
  // Where a chunk of a tensor being received goes, when it is the one due
  // (else nullptr); and its bytes are in.
  uint8_t* put_sink(uint64_t id, uint64_t offset, uint64_t len);
  void put_received(uint64_t id, uint64_t len);
  void seed(const wire::Seed& m);
  // Backward failures have no output to mark: they are returned as a message.
  std::optional<std::string> backward(const wire::Backward& m);
  void grad(const wire::Grad& m);
  void grad_mode(const wire::GradMode& m);
  void load_library(const wire::LoadLibrary& m);
  void call_remote(const wire::CallRemote& m);
  void stats(const wire::Stats& m);
  // Collectives (worker/collectives.cpp). A collective always runs, whatever
  // its input, so that its peers never wait for this rank in vain; failures
  // have no output to mark for a barrier and are returned as a message.
  void comm_init(const wire::CommInit& m);
  std::optional<std::string> collective(const wire::Collective& m);
  std::optional<std::string> transfer(const wire::Transfer& m);
  std::optional<std::string> transfer_gpu(const wire::Transfer& m);

  size_t live() const noexcept { return table_.size(); }
  // The position of the message being run in the controller's stream (for
  // the failures it reports).
  void set_stream_index(uint64_t index) noexcept { stream_index_ = index; }

  // Any thread (the I/O thread too, while a collective blocks the
  // executor): worker `rank` was lost. Every communicator it belongs to is
  // cancelled at once, and none with it is set up later.
  void peer_lost(int32_t rank, const std::string& reason);
  // Any thread: the name of op `id` ("aten::mm"), or empty.
  std::string op_name(uint32_t id) const;

 private:
  // A failed op's outputs, and everything computed from them.
  struct Failure {
    Failure(std::string op, std::string message, std::vector<int32_t> peers = {})
        : op(std::move(op)), message(std::move(message)), peers(std::move(peers)) {}
    std::string op;
    std::string message;
    // For a communication failure: the (global) ranks it depended on; the
    // controller reports WorkerLost when one of them is gone.
    std::vector<int32_t> peers;
    // Set when first stored (fail()): the id it was stored as, its identity
    // on the controller, which every value carrying it names when fetched.
    mutable uint64_t origin = 0;
    // Reported to the controller when first stored (wire::Error), unless it
    // only restates a failure reported where it began (a peer's input that
    // was an error value) or is no failure (an undefined optional output).
    bool report = true;
  };
  struct Comm {
    std::unique_ptr<collectives::Communicator> comm;
    std::vector<int32_t> ranks;  // global ranks, in group order
    std::string error;           // set-up failed: why
  };
  // A collective's output on a GPU, still in flight on the communication
  // stream: the event that marks its end, and the status exchange that says
  // whether every member's input was good (read when the output is used).
  struct InFlight {
    std::shared_ptr<const Gpu::Event> done;
    std::unique_ptr<collectives::Communicator::StatusExchange> status;
    std::vector<int32_t> ranks;
    const char* op = "";
  };
  struct Slot {
    at::Tensor tensor;
    std::shared_ptr<const Failure> failure;
    std::shared_ptr<InFlight> in_flight;
  };
  // The communicators a GPU's waits poll for asynchronous errors, from the
  // executor and from the thread that completes fetches.
  struct CommWatch {
    std::mutex mu;
    std::vector<std::pair<collectives::Communicator*, std::vector<int32_t>>> comms;
    void check();  // throws CommFailure
  };
  struct CommFailure : std::runtime_error {
    CommFailure(const std::string& what, std::vector<int32_t> peers) : std::runtime_error(what), peers(std::move(peers)) {}
    std::vector<int32_t> peers;
  };
  struct Op {
    std::optional<c10::OperatorHandle> handle;
    std::string name;
  };

  const Slot& slot(uint64_t id) const;
  // The slot, ready for the compute stream: a collective's output still in
  // flight is waited for (by the stream) and its status read first.
  const Slot& use(uint64_t id) {
    auto it = table_.find(id);
    if (it == table_.end()) return slot(id);
    if (it->second.in_flight) settle(it->second);
    return it->second;
  }
  void settle(Slot& s);
  // A slot without a failure always holds a defined tensor: an undefined
  // one (an optional output not computed) is stored as an error value.
  void store(uint64_t id, at::Tensor t) {
    if (!t.defined()) return fail(id, undefined_failure());
    table_[id] = Slot{std::move(t), nullptr, nullptr};
  }
  static std::shared_ptr<const Failure> undefined_failure();
  // Stores an error value; a failure stored for the first time is reported.
  void fail(uint64_t id, std::shared_ptr<const Failure> f);
  void watch(collectives::Communicator* comm, const std::vector<int32_t>& ranks);
  // Registers a communicator for peer_lost(); cancels it at once when one
  // of its members is already lost.
  void track(collectives::Communicator* comm, const std::vector<int32_t>& ranks);
  void untrack(collectives::Communicator* comm);
  // A transfer's communicator (a ProtocolError when it was never set up).
  Comm& comm_of(uint64_t id);
  // A transfer's dtype, shape, communicators and peers (ProtocolError).
  void check_transfer(const wire::Transfer& m);
  // Aborts every NCCL communicator (after an asynchronous failure), so that
  // nothing on the device waits for them any longer.
  void abort_comms(const std::string& why);
  // A tensor being received from the controller.
  struct Incoming {
    at::Tensor value;  // on the CPU until whole; undefined when `failure` is set
    uint64_t nbytes = 0;
    uint64_t received = 0;
    bool requires_grad = false;
    // Could not be stored (too large, out of memory): its bytes are read
    // and dropped, and its id becomes this error value.
    std::shared_ptr<const Failure> failure;
  };
  // A dtype from the wire, checked (ProtocolError naming `what` otherwise).
  static at::ScalarType checked_dtype(uint8_t dtype, const char* what);
  // The bytes of a contiguous tensor of `sizes` and `dtype`; a ProtocolError
  // for a negative size or one that overflows.
  static uint64_t shape_bytes(c10::IntArrayRef sizes, at::ScalarType dtype, const char* what);
  // shape_bytes(), also refused above max_tensor_bytes.
  uint64_t bounded_bytes(c10::IntArrayRef sizes, at::ScalarType dtype, const char* what) const;
  void finish_put(uint64_t id, Incoming in);
  static wire::Failed error_reply(uint64_t request, const Failure& f);
  void reply_error(uint64_t request, const Failure& f);
  std::string describe_args(const wire::OpArgs& args) const;
  void reply_metas(uint64_t request, const std::vector<at::Tensor>& outs);

  const int rank_;
  const at::Device device_;
  Outbox& out_;
  uint64_t stream_index_ = 0;
  Hooks hooks_;
  std::unordered_map<uint64_t, Incoming> incoming_;
  std::vector<Op> ops_;
  // Open addressing: no allocation per stored tensor on the per-op path.
  ska::flat_hash_map<uint64_t, Slot> table_;
  torch::jit::Stack stack_;
  std::unordered_map<std::string, std::vector<at::Tensor> (*)(const std::vector<at::Tensor>&,
                                                              const std::vector<double>&)>
      remote_;
  std::vector<void*> libraries_;
  std::unordered_map<uint64_t, Comm> comms_;
  std::unordered_map<std::string, std::shared_ptr<gloo::transport::Device>> gloo_devices_;  // by address
  // The communicators by member, for peer_lost() from any thread.
  struct Membership {
    std::mutex mu;
    std::vector<std::pair<collectives::Communicator*, std::vector<int32_t>>> comms;
    std::unordered_map<int32_t, std::string> lost;  // rank -> why
  };
  Membership members_;
  mutable std::mutex names_mu_;
  std::unordered_map<uint32_t, std::string> names_;  // op id -> name, for status reports
  std::shared_ptr<CommWatch> watch_ = std::make_shared<CommWatch>();
  std::chrono::milliseconds comm_timeout_{std::chrono::minutes(10)};
  std::unique_ptr<Gpu> gpu_;  // CUDA workers only
  uint64_t max_tensor_bytes_;
};

}  // namespace cox::worker
