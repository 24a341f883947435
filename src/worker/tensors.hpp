// The worker's half of the tensor engine: a table of tensors (or the errors
// that stand in for them) by id, and the messages that create, run, move and
// free them.
#pragma once

#include "collectives/communicator.hpp"
#include "wire/messages.hpp"

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/flat_hash_map.h>

#include <functional>
#include <memory>
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
    // Sends a reply frame to the controller at once.
    std::function<void(const wire::Reply&)> reply;
    // Every member's blob for a communicator being set up (through the
    // controller); throws collectives::CommError when the rendezvous fails.
    std::function<std::vector<std::string>(uint64_t comm, const std::string& blob)> rendezvous;
    // The address Gloo listens on: one this worker's peers can reach.
    std::string gloo_hostname = "127.0.0.1";
  };
  Tensors(int rank, at::Device device, Hooks hooks);
  ~Tensors();

  void define_op(const wire::DefineOp& m);
  // An op with no outputs (one that only writes its inputs) has nothing to
  // mark when it fails: its failure is returned, to be reported.
  std::optional<std::string> run_op(const wire::FrameView& f);
  void free(const wire::Free& m);
  void fetch(const wire::Fetch& m);
  void put(const wire::Put& m);
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

  size_t live() const noexcept { return table_.size(); }

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
  };
  struct Comm {
    std::unique_ptr<collectives::Communicator> comm;
    std::vector<int32_t> ranks;  // global ranks, in group order
    std::string error;           // set-up failed: why
  };
  struct Slot {
    at::Tensor tensor;
    std::shared_ptr<const Failure> failure;
  };
  struct Op {
    std::optional<c10::OperatorHandle> handle;
    std::string name;
  };

  const Slot& slot(uint64_t id) const;
  void store(uint64_t id, at::Tensor t) { table_[id] = Slot{std::move(t), nullptr}; }
  void fail(uint64_t id, std::shared_ptr<const Failure> f) { table_[id] = Slot{at::Tensor(), std::move(f)}; }
  void reply_error(uint64_t request, const Failure& f);
  std::string describe_args(const wire::FrameView& f) const;
  void reply_metas(uint64_t request, const std::vector<at::Tensor>& outs);

  const int rank_;
  const at::Device device_;
  Hooks hooks_;
  std::vector<Op> ops_;
  // Open addressing: no allocation per stored tensor on the per-op path.
  ska::flat_hash_map<uint64_t, Slot> table_;
  torch::jit::Stack stack_;
  std::unordered_map<std::string, std::vector<at::Tensor> (*)(const std::vector<at::Tensor>&,
                                                              const std::vector<double>&)>
      remote_;
  std::vector<void*> libraries_;
  std::unordered_map<uint64_t, Comm> comms_;
  std::shared_ptr<gloo::transport::Device> gloo_device_;
};

}  // namespace cox::worker
