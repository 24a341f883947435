// What the public handles point to: a mesh's shape and ranks, a tensor's id
// and metadata, and metadata a worker will report.
#pragma once

#include <cox/tensor.hpp>

#include "wire/meta.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace cox::tensor {

class Engine;
using wire::Meta;

struct MeshInfo {
  Shape shape;
  std::vector<int> ranks;  // global ranks, row-major over the shape
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
  std::mutex wait_mu;  // held by the one thread that waits for the report
  std::mutex mu;       // guards what follows
  bool resolved = false;
  std::vector<Meta> metas;
  std::string error_op, error;  // the op failed on the reporting worker
  uint64_t error_value = 0;     // its error value (wire::Failed::value)
};

// Shared by every thread that holds a handle: its metadata is known from
// the start, or becomes known once (from a pending report), under `mu_`.
struct TensorImpl {
  TensorImpl(DeviceMesh m, uint64_t id) : mesh(std::move(m)), id(id) {}
  // Queues the freeing of its shards.
  ~TensorImpl();

  // Before the handle is shared: its metadata, or the report it comes from.
  void set_known(Meta m) {
    known_ = std::move(m);
    ready_.store(true, std::memory_order_release);
  }
  void set_pending(std::shared_ptr<PendingMeta> p, uint32_t index) {
    pending_ = std::move(p);
    pending_index_ = index;
  }

  // Waits for a pending report; throws RemoteError when the op that made
  // this tensor failed on the reporting worker.
  const Meta& meta();
  // The same, but an error value gives nullptr and `upstream` (if unset) its
  // report: an op that reads it becomes an error value too.
  const Meta* meta_or_error(std::shared_ptr<PendingMeta>& upstream);
  // The metadata if known now, else nullptr; never waits.
  const Meta* known() const noexcept { return ready_.load(std::memory_order_acquire) ? &*known_ : nullptr; }

  const DeviceMesh mesh;
  const uint64_t id;
  std::atomic<bool> requires_grad{false};

 private:
  std::mutex mu_;
  std::atomic<bool> ready_{false};  // known_ is set, and never changes again
  std::optional<Meta> known_;
  std::shared_ptr<PendingMeta> pending_;
  uint32_t pending_index_ = 0;
};

}  // namespace cox::tensor
