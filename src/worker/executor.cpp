// The executor's own messages (the tensor ones are in tensors.cpp and
// collectives.cpp).
#include "worker/executor.hpp"

#include "collectives/communicator.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <thread>

namespace cox::worker {

namespace {
Tensors::Hooks with_rendezvous(
    Tensors::Hooks h,
    std::function<std::vector<std::string>(uint64_t, const std::string&, std::chrono::milliseconds)> rv) {
  h.rendezvous = std::move(rv);
  return h;
}
}  // namespace

Executor::Executor(int rank, const at::Device& device, Outbox& out, StreamReader& in, Tensors::Hooks hooks)
    : rank_(rank),
      out_(out),
      in_(in),
      tensors_(rank, device, out,
               with_rendezvous(std::move(hooks),
                               [this](uint64_t comm, const std::string& blob, std::chrono::milliseconds timeout) {
                                 return rendezvous(comm, blob, timeout);
                               })) {
  in_.set_chunk_sink(this);
}

void Executor::on(const wire::Sync& m) {
  // On a GPU, done means done on the device too.
  if (auto err = tensors_.synchronize()) report("sync", *err);
  out_.send_now(wire::SyncDone{m.id});
}

void Executor::on(const wire::Seq& m) {
  if (m.n != next_seq_) report("seq", fmt::format("sequence number {} arrived where {} was expected", m.n, next_seq_));
  next_seq_ = m.n + 1;
}

void Executor::on(const wire::Exit& m) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(m.code);
}

void Executor::on(const wire::Print& m) {
  std::FILE* file = m.stream == wire::Stream::kStderr ? stderr : stdout;
  std::fwrite(m.text.data(), 1, m.text.size(), file);
  std::fputc('\n', file);
  std::fflush(file);
}

void Executor::on(const wire::Sleep& m) {
  // Blocks the stream on purpose (tests of waits and deadlines).
  std::this_thread::sleep_for(std::chrono::milliseconds(m.ms));
}

void Executor::on(const wire::RendezvousReply& m) {
  // The answer to a rendezvous this worker stopped waiting for.
  if (abandoned_.erase(m.comm)) return;
  throw ProtocolError(fmt::format("a rendezvous reply for communicator {} arrived outside a rendezvous", m.comm));
}

std::vector<std::string> Executor::rendezvous(uint64_t comm, const std::string& blob, std::chrono::milliseconds timeout) {
  out_.send_control(wire::Rendezvous{comm, blob});
  std::optional<std::vector<uint8_t>> payload;
  try {
    payload = in_.wait_for(
        wire::MsgType::kRendezvousReply,
        [&](const wire::FrameView& f) { return wire::decode<wire::RendezvousReply>(f).comm == comm; },
        StreamReader::Clock::now() + timeout);
  } catch (const Timeout&) {
    abandoned_.insert(comm);
    throw collectives::CommError(
        fmt::format("rendezvous of communicator {}: no answer from the controller within {} ms", comm, timeout.count()));
  }
  if (!payload) throw Error("lost the controller during a rendezvous");
  auto reply = wire::decode<wire::RendezvousReply>(
      wire::FrameView{wire::MsgType::kRendezvousReply, payload->data(), payload->size()});
  if (!reply.ok) throw collectives::CommError("rendezvous failed: " + reply.error);
  return std::move(reply.blobs);
}

std::string Executor::describe(wire::MsgType type, uint32_t detail) const {
  switch (type) {
    case wire::MsgType::kOp: {
      std::string name = tensors_.op_name(detail);
      return "op " + (name.empty() ? fmt::format("#{}", detail) : name);
    }
    case wire::MsgType::kCollective: {
      static const char* const kinds[] = {"", "all_reduce", "reduce_scatter", "all_gather", "all_to_all",
                                          "broadcast", "barrier"};
      return detail >= 1 && detail <= 6 ? fmt::format("collective {}", kinds[detail]) : "collective";
    }
    default: return wire::to_string(type);
  }
}

void Executor::report(const std::string& op, const std::string& message) {
  wire::Error e;
  e.index = index_;
  e.op = op;
  e.message = message;
  out_.send_now(e);
}

}  // namespace cox::worker
