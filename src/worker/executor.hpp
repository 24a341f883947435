// The executor: runs the controller's stream, one message at a time, in
// order, on the worker's main thread. One on() per message addressed to a
// worker (wire::dispatch checks at compile time that none is missing); the
// tensor messages go to the tensor table (worker/tensors).
#pragma once

#include "wire/messages.hpp"
#include "worker/outbox.hpp"
#include "worker/stream_reader.hpp"
#include "worker/tensors.hpp"

#include <atomic>
#include <string>
#include <unordered_set>

namespace cox::worker {

class Executor final : public StreamReader::ChunkSink {
 public:
  // `hooks` as the tensor table takes them; the rendezvous is the
  // executor's own (through `out` and `in`).
  Executor(int rank, const at::Device& device, Outbox& out, StreamReader& in, Tensors::Hooks hooks);

  // Runs one frame; returns false once told to shut down.
  bool run(const wire::FrameView& f) {
    ++index_;
    progress_.type.store(static_cast<uint8_t>(f.type), std::memory_order_relaxed);
    progress_.started.store(index_, std::memory_order_release);
    tensors_.set_stream_index(index_);
    wire::dispatch<wire::Dir::kToWorker>(f, *this);
    progress_.finished.store(index_, std::memory_order_release);
    return !shutdown_;
  }

  // What the executor is doing, for the I/O thread's heartbeats: relaxed
  // stores on the executor's path, read a few times a second.
  struct Progress {
    std::atomic<uint64_t> started{0};   // messages started
    std::atomic<uint64_t> finished{0};  // messages finished
    std::atomic<uint8_t> type{0};       // the last one's MsgType
    std::atomic<uint32_t> detail{0};    // its op id, or collective kind
  };
  const Progress& progress() const noexcept { return progress_; }
  // Any thread: what message `type` with `detail` is, in words.
  std::string describe(wire::MsgType type, uint32_t detail) const;
  // Any thread: a peer was lost (the I/O thread calls this too, while a
  // collective may block the executor).
  void peer_lost(const wire::PeerLost& m) { tensors_.peer_lost(m.rank, m.reason); }

  void on(const wire::Heartbeat&) {}
  void on(const wire::Sync& m);
  void on(const wire::Shutdown&) { shutdown_ = true; }
  void on(const wire::Echo& m) { out_.send_now(wire::EchoReply{m.id, m.payload}); }
  void on(const wire::Seq& m);
  void on(const wire::Raise& m) { report("raise", m.message); }
  void on(const wire::Exit& m);
  void on(const wire::Print& m);
  void on(const wire::Sleep& m);
  void on(const wire::DefineOp& m) { tensors_.define_op(m); }
  void on(const wire::PeerLost& m) { peer_lost(m); }
  void on(const wire::Op& m) {
    progress_.detail.store(m.op, std::memory_order_relaxed);
    if (auto err = tensors_.run_op(m)) report("op", *err);
  }
  void on(const wire::Free& m) { tensors_.free(m); }
  void on(const wire::Fetch& m) { tensors_.fetch(m); }
  void on(const wire::Put& m) { tensors_.put(m); }
  void on(const wire::PutData& m) { tensors_.put_data(m); }
  void on(const wire::Seed& m) { tensors_.seed(m); }
  void on(const wire::Backward& m) {
    if (auto err = tensors_.backward(m)) report("backward", *err);
  }
  void on(const wire::Grad& m) { tensors_.grad(m); }
  void on(const wire::GradMode& m) { tensors_.grad_mode(m); }
  void on(const wire::LoadLibrary& m) { tensors_.load_library(m); }
  void on(const wire::CallRemote& m) { tensors_.call_remote(m); }
  void on(const wire::Stats& m) { tensors_.stats(m); }
  void on(const wire::CommInit& m) { tensors_.comm_init(m); }
  void on(const wire::Collective& m) {
    progress_.detail.store(static_cast<uint32_t>(m.kind), std::memory_order_relaxed);
    if (auto err = tensors_.collective(m)) report("barrier", *err);
  }
  void on(const wire::Transfer& m) {
    if (auto err = tensors_.transfer(m)) report("to_mesh", *err);
  }
  void on(const wire::RendezvousReply& m);

  // Large PutData chunks, read by the stream reader straight into place.
  uint8_t* chunk_sink(uint64_t id, uint64_t offset, uint64_t len) override { return tensors_.put_sink(id, offset, len); }
  void on_chunk(uint64_t id, uint64_t, uint64_t len) override { tensors_.put_received(id, len); }

 private:
  // Sends this member's blob and reads on until the controller answers.
  std::vector<std::string> rendezvous(uint64_t comm, const std::string& blob, std::chrono::milliseconds timeout);
  void report(const std::string& op, const std::string& message);

  const int rank_;
  Outbox& out_;
  StreamReader& in_;
  uint64_t index_ = 0;
  uint64_t next_seq_ = 0;
  bool shutdown_ = false;
  Progress progress_;
  std::unordered_set<uint64_t> abandoned_;  // rendezvous given up on: their late answers are dropped
  Tensors tensors_;
};

}  // namespace cox::worker
