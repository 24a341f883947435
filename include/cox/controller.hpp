// cox::Controller: the one process that drives every worker.
//
// A controller gets its workers in one of two ways:
//   Controller::local({.workers = 4})   spawns cox-worker processes on this
//                                       host, connected over a Unix socket in
//                                       a private directory;
//   Controller::attach({.workers = 16}) listens on TCP; workers started by
//                                       anything else (ssh, srun, mpirun) run
//                                       `cox-worker --connect HOST:PORT --rank R`
//                                       with the token in $COX_TOKEN or a
//                                       0600 file named by $COX_TOKEN_FILE.
// Either way start-up waits for every worker (cox::Timeout names the ranks
// that never came), each worker proves the shared token by HMAC
// challenge-response, and shutdown() or the destructor drains, stops and
// reaps every worker. A worker that dies is noticed at once locally (child
// exit) or within the heartbeat timeout remotely; every call that needs it
// then fails with cox::WorkerLost, and the survivors abort every
// communicator it belonged to, so that none waits for it in a collective.
//
// Threads: every method of a Controller, of its meshes and tensors, and of
// their futures may be called from several threads at once. Issuing work is
// serialized (one order per worker); waits (sync, ping, get) run side by
// side. shutdown() from one thread ends the waits of the others with
// cox::Error ("shut down while this call waited"). Moving or destroying a
// Controller while another thread uses it is not allowed.
#pragma once

#include <cox/errors.hpp>
#include <cox/export.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cox {

class DeviceMesh;  // <cox/tensor.hpp>
namespace detail {
struct Access;  // the library's own way in (never part of the API)
}  // namespace detail

enum class OutputStream { kStdout, kStderr };

// Receives each line a worker writes, with its rank. Called on the
// controller's I/O thread: keep it short and do not call back into the
// controller from it.
using OutputSink = std::function<void(int rank, OutputStream stream, std::string_view line)>;

// Writes "[worker R] line" to this process's stdout or stderr.
COX_API OutputSink default_output_sink();

// Where an attaching controller listens, for whatever launches the workers.
struct AttachInfo {
  std::string host;
  uint16_t port = 0;
  std::string token;  // hand to workers through $COX_TOKEN or a 0600 file
};

// What one worker is doing, as its last heartbeat said (Controller::status):
// at most about heartbeat_interval old.
struct WorkerStatus {
  enum class State {
    kIdle,  // waiting for work
    kBusy,  // running `doing` for `busy_for`
    kLost,  // see `lost`
    kExited,
  };
  int rank = -1;
  State state = State::kIdle;
  std::string device;   // "cpu", "cuda:0"
  int64_t pid = -1;     // local workers
  std::string doing;    // the operation running: "op aten::mm", "collective all_reduce", "sync"
  std::chrono::milliseconds busy_for{0};
  uint64_t started = 0;  // messages the worker has started so far
  std::chrono::milliseconds last_heard{0};  // since its last message or heartbeat
  size_t pending_bytes = 0;  // queued for it and not yet written
  std::string lost;          // why it was lost
};
// One line per worker: "worker 2 [cuda:2] busy 12.3 s in collective all_reduce (message 1841), heard 0.4 s ago".
COX_API std::string to_string(const WorkerStatus& s);

struct ControllerOptions {
  // Number of workers (ranks 0..workers-1). 0: one per GPU used (see
  // device and gpus), or 1 on the CPU; attach() needs a number.
  int workers = 0;

  // --- local spawn: where the workers run ---
  // "auto": on GPUs where this libtorch has CUDA and a GPU is visible, else
  // on the CPU ($COX_DEVICE, when set, decides instead). "cuda": on GPUs
  // (an error where there are none). "cpu".
  std::string device = "auto";
  // The GPUs used, by index; empty: every visible one. Worker r gets
  // gpus[r % gpus.size()]. Workers sharing a GPU get distinct NCCL host ids
  // (NCCL_HOSTID, and NCCL_SOCKET_IFNAME=lo, unless set), so that NCCL lets
  // them talk (over sockets: slow, but right).
  std::vector<int> gpus;

  // --- local spawn ---
  // The cox-worker binary; empty finds it: $COX_WORKER, next to this
  // executable, in the build tree, in the install tree, then on $PATH.
  std::string worker_path;
  // Extra environment per worker rank, e.g. CUDA_VISIBLE_DEVICES or
  // NCCL_HOSTID; applied on top of this process's environment. Unless
  // OMP_NUM_THREADS is set (here or in this process), each worker gets
  // OMP_NUM_THREADS = cores / workers (at least 1), so that workers on one
  // machine do not oversubscribe its cores.
  std::function<std::vector<std::pair<std::string, std::string>>(int rank)> worker_env;

  // --- attach ---
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;  // 0: the system picks one; see on_listening
  std::string token;         // empty: a fresh random one
  // Called once the controller listens, before it waits for workers: start
  // them from here (the port is known only now when listen_port is 0).
  std::function<void(const AttachInfo&)> on_listening;

  // --- both ---
  std::chrono::milliseconds startup_timeout{30000};
  std::chrono::milliseconds shutdown_timeout{5000};
  std::chrono::milliseconds heartbeat_interval{1000};
  // A worker silent for this long is lost; a worker that hears nothing from
  // its controller for this long exits.
  std::chrono::milliseconds heartbeat_timeout{10000};
  // The largest frame either side writes or accepts, in [4096, 2^32-1].
  // It limits no transfer: tensors travel in chunks of at most 4 MiB (less
  // when this is lower), and any other message above it in fragments.
  size_t max_frame_bytes = size_t{1} << 30;
  // Backpressure. Sends never block the controller's I/O thread; a thread
  // that issues work to a worker with more than send_buffer_bytes queued
  // and unwritten (the worker is busy, paused or cut off) waits for room,
  // and a from_local/scatter waits until its bytes are written, up to
  // send_timeout, then gets cox::Timeout naming the worker and the bytes
  // pending. Calls with their own timeout (sync, ping, get) wait at most
  // that long instead.
  size_t send_buffer_bytes = size_t{64} << 20;
  std::chrono::milliseconds send_timeout{std::chrono::minutes(10)};
  // How long a collective (or a transfer, or setting up a communicator) may
  // wait for its peers on a worker before it fails there. A peer that dies
  // is noticed at once; this bounds the wait for one that hangs.
  std::chrono::milliseconds collective_timeout{std::chrono::minutes(10)};
  // An operation (an op, a collective, a transfer, a communicator's set-up)
  // that runs on a worker for longer than this is reported, naming the
  // worker and the operation: a warning line on the worker's stderr sink,
  // once per operation; or, with op_timeout_loses_worker, the worker is
  // declared lost (cox::WorkerLost for all that depends on it; a local
  // one is killed). Zero: never. Measured by the worker's heartbeats, so
  // to within about heartbeat_interval.
  std::chrono::milliseconds op_timeout{0};
  bool op_timeout_loses_worker = false;
  // Lines of stderr kept per worker for WorkerLost messages.
  size_t stderr_lines_kept = 20;
  OutputSink output_sink;  // empty: default_output_sink()
};

class COX_API Controller {
 public:
  static Controller local(ControllerOptions options);
  static Controller attach(ControllerOptions options);

  Controller(Controller&&) noexcept;
  Controller& operator=(Controller&&) noexcept;
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;
  // Shuts down (as shutdown()), swallowing errors.
  ~Controller();

  int size() const noexcept;

  // A mesh over all workers, row-major over ranks: mesh({{"dp", 2}, {"tp", 4}}).
  // (Defined with the tensor API: include <cox/tensor.hpp>.)
  DeviceMesh mesh(const std::vector<std::pair<std::string, int64_t>>& dims);

  // Returns once every worker has processed everything sent to it before
  // this call. Throws cox::WorkerLost if a worker is gone, the first
  // cox::RemoteError reported since the last sync and not yet delivered, or
  // cox::Timeout (naming the ranks not done) when `timeout` passes first.
  // An error is raised once: a failing op is reported by every worker that
  // ran it, and fetching any shard of an error value it made (its output, or
  // anything computed from it) raises it and counts as delivered for all of
  // those workers, so sync does not raise it again; a failure nobody fetched
  // (and one with no output to fetch: an in-place op, backward, a barrier)
  // is raised here, one per sync call (the others reported since the last
  // sync are dropped with it).
  void sync(std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  // Round trip to one worker (sent, executed in order, answered); returns its
  // duration. Throws as sync() does.
  std::chrono::nanoseconds ping(int rank, std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  // Drains and stops every worker, waits up to shutdown_timeout for them to
  // exit, kills those that did not, and reaps them all. Idempotent.
  void shutdown();

  // The process id of a locally spawned worker; -1 for an attached one.
  int64_t worker_pid(int rank) const;
  // Where a worker's tensors live, as it reported when it joined: "cpu",
  // "cuda:0", ...
  std::string device(int rank) const;
  // Ranks that have been lost so far.
  std::vector<int> lost_workers() const;
  // What every worker is doing now (from its heartbeats): the first thing
  // to look at when a job seems stuck. Never waits on a worker.
  std::vector<WorkerStatus> status() const;
  // Attach mode: where the controller listens.
  AttachInfo attach_info() const;

  class Impl;

 private:
  friend struct detail::Access;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cox
