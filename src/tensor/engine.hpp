// The tensor engine of one controller: op dispatch over the runtime's
// streams. It composes the op registry (op_registry.hpp), the op encoder
// (op_encoder.hpp), the meta cache (meta_cache.hpp), the release queue
// (release_queue.hpp) and the communicator registry (comm_registry.hpp),
// and sees the runtime only through runtime::Runtime.
//
// Locks, never held while waiting for a worker:
//   order_mu_  the order of what is sent to several workers (ops, op
//              definitions, collectives and the set-up of their
//              communicators, grad mode): every worker sees one order.
//   the meta cache's, the release queue's, remote_mu_: their own data.
// Encoding, meta inference and waits for pending metadata run outside all
// of them, so one thread waiting for a worker's report holds up no other.
#pragma once

#include <cox/tensor.hpp>

#include "controller/runtime.hpp"
#include "tensor/comm_registry.hpp"
#include "tensor/handles.hpp"
#include "tensor/meta_cache.hpp"
#include "tensor/op_registry.hpp"
#include "tensor/release_queue.hpp"
#include "wire/messages.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace cox::tensor {

class Engine final : public runtime::Service, public std::enable_shared_from_this<Engine> {
 public:
  explicit Engine(runtime::Runtime& rt) : rt_(&rt), release_(&rt) {}
  // The engine of a runtime, made on first use.
  static std::shared_ptr<Engine> of(runtime::Runtime& rt);

  // The runtime is shutting down: later calls throw, releases are dropped.
  void on_shutdown() noexcept override;

  std::vector<Tensor> call(const DeviceMesh& mesh, const OpInfo& op, const Arg* args, size_t nargs);
  std::vector<Tensor> call_remote(const DeviceMesh& mesh, const std::string& name, const std::vector<Tensor>& inputs,
                                  const std::vector<double>& scalars);

  Tensor put(const DeviceMesh& mesh, const std::vector<at::Tensor>& per_rank_values, bool requires_grad);
  uint64_t fetch(int rank, uint64_t id);
  at::Tensor wait_fetch(int rank, uint64_t request, std::optional<std::chrono::milliseconds> timeout);
  // The fetch's result will not be read: its reply is dropped.
  void forget_fetch(int rank, uint64_t request) noexcept { release_.forget(rank, request); }
  // A RemoteError for error value `value` was raised to the user: sync
  // does not raise it again.
  void error_delivered(uint64_t value) noexcept {
    if (auto* rt = rt_.load(std::memory_order_acquire)) rt->error_delivered(value);
  }
  // Waits for a pending metadata report (outside every engine lock).
  void resolve(PendingMeta& p);

  void backward(const Tensor& t, const Tensor& grad);
  Tensor grad(const Tensor& t);
  bool set_grad_mode(bool enabled);  // returns the previous mode
  void seed(const DeviceMesh& mesh, uint64_t seed, bool per_rank);
  void load_library(const DeviceMesh& mesh, const std::string& path);
  int64_t live_tensors(int rank);
  void sync(const DeviceMesh& mesh, std::optional<std::chrono::milliseconds> timeout);

  // Queues the freeing of a tensor on the workers that hold it.
  void release(uint64_t id, const std::vector<int>& ranks) noexcept { release_.release(id, ranks); }

  // Collectives (tensor/collectives.cpp). `out` unset: in place.
  Tensor collective(const Tensor& t, const std::vector<std::string>& dims, wire::Collective proto,
                    const std::optional<Meta>& out);
  void barrier(const DeviceMesh& mesh, const std::vector<std::string>& dims);
  Tensor transfer(const Tensor& t, const DeviceMesh& dst, const std::vector<int64_t>& sources);

  uint64_t new_tensor_id() { return next_tensor_id_.fetch_add(1, std::memory_order_relaxed); }

 private:
  runtime::Runtime& rt() const {
    runtime::Runtime* rt = rt_.load(std::memory_order_acquire);
    if (__builtin_expect(rt == nullptr, 0)) throw Error("the controller of this mesh has shut down");
    return *rt;
  }
  // With order_mu_ held: every worker learns an op before its first use.
  void define(runtime::Runtime& rt, const OpInfo& op);
  // With order_mu_ held: the same frame to each of `ranks`, in one batch.
  void send_all(runtime::Runtime& rt, const std::vector<int>& ranks, const std::vector<uint8_t>& frame);
  // A small message for every worker, skipping lost ones (grad mode).
  void send_every_worker(runtime::Runtime& rt, const std::vector<uint8_t>& frame);

  std::atomic<runtime::Runtime*> rt_;
  std::atomic<uint64_t> next_tensor_id_{1};
  std::atomic<bool> grad_enabled_{true};

  std::mutex order_mu_;
  std::vector<bool> defined_;  // op ids announced to the workers
  CommRegistry comms_;
  uint64_t next_transfer_ = 1;

  MetaCache cache_;
  ReleaseQueue release_;

  std::mutex remote_mu_;
  std::unordered_map<std::string, std::vector<Meta>> remote_cache_;  // remote function signatures
};

}  // namespace cox::tensor
