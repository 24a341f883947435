// The tensor engine on the controller: op dispatch with meta-shape inference
// and its cache, tensor handles and their release, fetches.
#pragma once

#include <cox/tensor.hpp>

#include "controller/controller_impl.hpp"
#include "ops/registry.hpp"
#include "tensor/meta.hpp"
#include "wire/messages.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/SmallVector.h>

#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace cox::tensor {

class Engine;

struct MeshInfo {
  Shape shape;
  std::vector<int> ranks;
};

// Metadata a worker will report, for ops without a meta kernel.
struct PendingMeta {
  PendingMeta() = default;
  PendingMeta(const PendingMeta&) = delete;
  PendingMeta& operator=(const PendingMeta&) = delete;
  // A report nobody read (every output died first) is dropped as it comes.
  ~PendingMeta();

  std::weak_ptr<Engine> engine;  // set when the report is asked for
  uint64_t request = 0;
  int rank = -1;
  std::string cache_key;
  std::mutex mu;
  bool resolved = false;
  std::vector<Meta> metas;
  std::string error_op, error;  // the op failed on the reporting worker
  uint64_t error_value = 0;     // its error value (wire::Failed::value)
};

struct TensorImpl {
  TensorImpl(DeviceMesh m, uint64_t id) : mesh(std::move(m)), id(id) {}
  ~TensorImpl();
  const Meta& meta();

  DeviceMesh mesh;
  uint64_t id;
  bool requires_grad = false;
  std::optional<Meta> known;
  std::shared_ptr<PendingMeta> pending;
  uint32_t pending_index = 0;
};

// A resolved aten op and what dispatch needs from its schema.
struct OpInfo {
  uint32_t id = 0;
  std::string name, overload, qualified;
  c10::OperatorHandle handle;
  size_t nargs = 0;
  std::vector<bool> device_arg;          // arguments of type Device or Device?
  std::vector<c10::IValue> defaults;     // per argument (None where it has none)
  std::vector<bool> has_default;
  std::vector<int> return_writes_arg;    // per return: the argument it writes in place, or -1
  bool returns_list = false;             // some return is a Tensor[]
  // Ops that set requires_grad on their output themselves.
  bool is_detach = false, is_requires_grad_ = false;

  explicit OpInfo(c10::OperatorHandle h) : handle(std::move(h)) {}
};

// Resolves "aten::add" + "Tensor" once per process; InvalidArgument when no
// such op exists.
const OpInfo& intern_op(const std::string& name, const std::string& overload);

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  explicit Engine(Controller::Impl* impl) : impl_(impl) { ops_detail::ensure_registered(); }
  // The controller is shutting down: later calls throw, releases are dropped.
  void detach();

  std::vector<Tensor> call(const DeviceMesh& mesh, const OpInfo& op, const Arg* args, size_t nargs);
  std::vector<Tensor> call_remote(const DeviceMesh& mesh, const std::string& name, const std::vector<Tensor>& inputs,
                                  const std::vector<double>& scalars);

  Tensor put(const DeviceMesh& mesh, const std::vector<at::Tensor>& per_rank_values, bool requires_grad);
  uint64_t fetch(int rank, uint64_t id);
  at::Tensor wait_fetch(int rank, uint64_t request, std::optional<std::chrono::milliseconds> timeout);
  // The fetch's result will not be read: its reply is dropped.
  void forget_fetch(int rank, uint64_t request) noexcept;
  void resolve(PendingMeta& p);

  void backward(const Tensor& t, const Tensor& grad);
  Tensor grad(const Tensor& t);
  bool set_grad_mode(bool enabled);  // returns the previous mode
  void seed(const DeviceMesh& mesh, uint64_t seed, bool per_rank);
  void load_library(const DeviceMesh& mesh, const std::string& path);
  int64_t live_tensors(int rank);
  void sync(const DeviceMesh& mesh, std::optional<std::chrono::milliseconds> timeout);

  // Queues the freeing of a tensor on the workers that hold it. Frees ride
  // in front of the next op sent to each worker (so dead shards go at once,
  // and their memory is reused while still warm), or go out on their own at
  // a sync, a fetch, or once many have queued.
  void release(uint64_t id, const std::vector<int>& ranks) noexcept;

  // Collectives (tensor/collectives.cpp). `out` unset: in place.
  Tensor collective(const Tensor& t, const std::vector<std::string>& dims, wire::Collective proto,
                    const std::optional<Meta>& out);
  void barrier(const DeviceMesh& mesh, const std::vector<std::string>& dims);
  Tensor transfer(const Tensor& t, const DeviceMesh& dst, const std::vector<int64_t>& sources);
  // The groups of `mesh` along `dims` (all dims when empty), with their
  // communicators, set up on first use. Cached per (mesh view, dims).
  struct Groups {
    std::vector<std::vector<int>> members;  // global ranks, in group order
    std::vector<uint64_t> comms;
  };
  const Groups& groups(const DeviceMesh& mesh, const std::vector<std::string>& dims);
  // The communicators of these groups (0 for a group of one), made where
  // missing: split from the world's on GPUs, else each through a rendezvous.
  std::vector<uint64_t> comms_for(const std::vector<std::vector<int>>& groups);
  bool split_from_world();

  uint64_t new_tensor_id() { return next_tensor_id_++; }
  Controller::Impl& impl();

 private:
  struct OutSpec {
    int writes_arg = -1;  // an input written in place
    Meta meta;
  };
  struct CacheEntry {
    std::vector<OutSpec> outs;
    bool learned = false;  // no meta kernel: metadata comes from a worker
  };

  void define(const OpInfo& op);
  // With mu_ held: the communicator of exactly these ranks, in this order;
  // its members are told to set it up when it is new.
  uint64_t comm_for(const std::vector<int>& ranks);
  // With free_mu_ held: sends the queued frees of `rank` (all ranks: -1).
  void flush_frees_locked(int rank);
  void append_frees_locked(int rank, std::vector<uint8_t>& out);
  void post_all(const std::vector<int>& ranks, const std::vector<uint8_t>& frame);
  // Runs the op on meta tensors (the cache missed).
  CacheEntry infer(const OpInfo& op, const Arg* args, size_t nargs);

  // Recursive: resolving a pending report (which may happen while encoding
  // an op) updates the cache.
  std::recursive_mutex mu_;
  Controller::Impl* impl_;
  std::vector<bool> defined_;  // op ids announced to the workers
  std::unordered_map<std::string, CacheEntry> cache_;
  std::unordered_map<std::string, std::vector<Meta>> remote_cache_;  // remote function signatures
  std::vector<uint8_t> frame_;
  std::string key_;
  std::atomic<uint64_t> next_tensor_id_{1};
  bool grad_enabled_ = true;
  std::unordered_map<std::string, Groups> groups_;
  std::map<std::vector<int>, uint64_t> comms_;
  uint64_t next_comm_ = 1;
  uint64_t next_transfer_ = 1;

  std::mutex free_mu_;
  std::vector<std::vector<uint64_t>> frees_;  // per worker rank
  std::vector<uint8_t> free_frame_;
};

}  // namespace cox::tensor
