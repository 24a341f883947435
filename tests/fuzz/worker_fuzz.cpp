// Fuzz target for the worker's handlers: a worker::Executor on the CPU, in
// process, runs the frames of the input as the controller's stream, and
// every reply it sends must decode as a message for the controller. A bad
// message must end in a ProtocolError (the worker exits saying why) or an
// error value reported back, never in a crash, another exception (the
// worker would die "fatal"), or undefined behaviour.
//
// Left out by the harness, because they exit, sleep, write to the terminal
// or load code: Exit, Sleep, Print, LoadLibrary. Ops are run only when the
// op is in kOps below or unknown to libtorch (ops such as empty or expand
// allocate whatever their arguments say, which is the controller's right;
// the fuzzer would only find the machine's memory). Communicators are an
// in-process loopback (no Gloo, no rendezvous over a socket) that checks
// every pointer, count, root and peer the worker hands it. Tensors are
// capped at kMaxTensorBytes, as Hooks::max_tensor_bytes caps them.
//
// Input: a flags byte (bit 0: PutData chunks take the stream reader's
// direct path, chunk_sink/on_chunk), then frames.
#include "fuzz/fuzz_common.hpp"
#include "fuzz/in_process_worker.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <set>

namespace {

using namespace cox;
using namespace cox::wire;
using fuzz::bug;
using fuzz::Loopback;
using fuzz::Transport;

constexpr uint64_t kMaxTensorBytes = 1024;
constexpr size_t kMaxFrame = fuzz::Transport::kMaxFrame;

// Ops whose outputs are bounded by their inputs' sizes.
const std::set<std::string> kOps = {
    "aten::neg",   "aten::abs",       "aten::relu",   "aten::sigmoid",   "aten::sum",     "aten::mean",
    "aten::clone", "aten::t",         "aten::view",   "aten::reshape",   "aten::narrow",  "aten::select",
    "aten::add_",  "aten::mul_",      "aten::sub_",   "aten::copy_",     "aten::mm",      "aten::zeros_like",
    "aten::unsqueeze", "aten::squeeze", "aten::transpose", "aten::flatten", "aten::to",  "aten::detach",
    "aten::requires_grad_"};

bool left_out(const FrameView& f) {
  switch (f.type) {
    case MsgType::kExit:
    case MsgType::kSleep:
    case MsgType::kPrint:
    case MsgType::kLoadLibrary: return true;
    case MsgType::kDefineOp: {
      DefineOp d;
      try {
        d = decode<DefineOp>(f);
      } catch (const ProtocolError&) {
        return false;  // refused by the worker
      }
      if (kOps.count(d.name)) return false;
      return c10::Dispatcher::singleton().findSchema({d.name, d.overload}).has_value();
    }
    default: return false;
  }
}

}  // namespace

COX_FUZZ_FRAME_MUTATOR(1)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Transport* t = new Transport;  // lives for the process
  if (size < 1 || size > 256 * 1024) return 0;
  const bool direct_chunks = data[0] & 1;
  c10::GradMode::set_enabled(true);
  worker::Tensors::Hooks hooks;
  hooks.max_tensor_bytes = kMaxTensorBytes;
  hooks.connect = [](int index, int n, const collectives::CommOptions&, const collectives::Exchange&) {
    return std::make_unique<Loopback>(index, n);
  };
  {
    worker::Executor exec(0, at::Device(at::kCPU), *t->outbox, *t->reader, std::move(hooks));
    FrameScanner scanner(kMaxFrame);
    Assembler assembler;
    try {
      scanner.scan(data + 1, size - 1, [&](const FrameView& raw) {
        auto f = assembler.feed(raw);
        if (!f || left_out(*f)) return;
        if (direct_chunks && f->type == MsgType::kPutData) {
          // As the stream reader does for a chunk whose header it has read.
          const auto d = decode<PutData>(*f);
          if (uint8_t* sink = exec.chunk_sink(d.id, d.offset, d.data.size)) {
            std::memcpy(sink, d.data.data, d.data.size);
            exec.on_chunk(d.id, d.offset, d.data.size);
            return;
          }
        }
        const bool go_on = exec.run(*f);
        t->drain_checked();
        if (!go_on) throw ProtocolError("shut down");  // ends the stream
      });
    } catch (const ProtocolError&) {
      // the worker exits, saying why
    } catch (const cox::Error&) {
      // the same, for what is not the message's fault (no memory for a placeholder)
    }
  }
  t->drain_checked();
  return 0;
}

// Seeds: a tensor put and used by ops, fetched; a communicator with each
// collective and a transfer; and the known bad messages (regressions).
int cox_fuzz_write_seeds(const std::filesystem::path& dir) {
  using cox::fuzz::write_seed;
  auto frames = [](auto... ms) {
    std::vector<uint8_t> out;
    (encode_frame(ms, out), ...);
    return out;
  };
  std::vector<uint8_t> value(16, 0);
  float ones[4] = {1, 2, 3, 4};
  std::memcpy(value.data(), ones, 16);
  Put put;
  put.id = 1;
  put.dtype = 6;  // float
  put.sizes = {2, 2};
  put.nbytes = 16;
  PutData pd;
  pd.id = 1;
  pd.data = Bytes{value.data(), value.size()};
  std::vector<uint8_t> op;
  append_frame(op, MsgType::kOp, [](Writer& w) {
    w.put<uint32_t>(1);
    w.put<uint16_t>(1);
    w.put<uint8_t>(static_cast<uint8_t>(ArgTag::kTensor));
    w.put<uint64_t>(1);
    w.put<uint32_t>(1);
    w.put<uint64_t>(2);
    w.put<uint64_t>(9);
    w.put<int32_t>(0);
  });
  std::vector<uint8_t> mm;
  append_frame(mm, MsgType::kOp, [](Writer& w) {
    w.put<uint32_t>(2);
    w.put<uint16_t>(2);
    for (int i = 0; i < 2; ++i) {
      w.put<uint8_t>(static_cast<uint8_t>(ArgTag::kTensor));
      w.put<uint64_t>(1);
    }
    w.put<uint32_t>(1);
    w.put<uint64_t>(3);
    w.put<uint64_t>(0);
    w.put<int32_t>(-1);
  });
  auto tensors = frames(put, pd, DefineOp{1, "aten::neg", ""}, DefineOp{2, "aten::mm", ""});
  tensors.insert(tensors.end(), op.begin(), op.end());
  tensors.insert(tensors.end(), mm.begin(), mm.end());
  const auto tail = frames(Fetch{5, 2}, Fetch{6, 3}, Grad{1, 4}, Backward{2, 0}, Stats{7}, Free{}, Sync{8});
  tensors.insert(tensors.end(), tail.begin(), tail.end());
  write_seed(dir, "tensors", {0}, tensors);
  write_seed(dir, "tensors_direct", {1}, tensors);

  CommInit init;
  init.comm = 10;
  init.timeout_ms = 1000;
  init.ranks = {0, 1};
  auto coll = frames(put, pd, init);
  const CollectiveKind kinds[] = {CollectiveKind::kAllReduce, CollectiveKind::kReduceScatter, CollectiveKind::kAllGather,
                                  CollectiveKind::kAllToAll, CollectiveKind::kBroadcast, CollectiveKind::kBarrier};
  uint64_t out = 20;
  for (CollectiveKind k : kinds) {
    Collective c;
    c.comm = 10;
    c.kind = k;
    c.in = k == CollectiveKind::kBarrier ? 0 : 1;
    c.out = k == CollectiveKind::kBarrier ? 0 : out++;
    c.dtype = 6;
    c.sizes = {2, 2};
    encode_frame(c, coll);
  }
  Transfer tr;
  tr.tag = 3;
  tr.src = 1;
  tr.sends = {Transfer::Send{10, 1}};
  tr.out = 30;
  tr.recv_comm = 10;
  tr.recv_peer = 1;
  tr.dtype = 6;
  tr.sizes = {2, 2};
  encode_frame(tr, coll);
  CommInit split;
  split.comm = 11;
  split.ranks = {0};
  split.parent = 10;
  encode_frame(split, coll);
  encode_frame(Fetch{1, 30}, coll);
  write_seed(dir, "collectives", {0}, coll);

  // Regressions: an op id at the top of its range, a put of 2^60 bytes.
  write_seed(dir, "define_op_max_id", {0}, frames(DefineOp{0xffffffffu, "aten::neg", ""}));
  Put huge;
  huge.id = 1;
  huge.dtype = 0;
  huge.sizes = {int64_t{1} << 60};
  huge.nbytes = uint64_t{1} << 60;
  write_seed(dir, "put_huge", {0}, frames(huge, Fetch{1, 1}));
  return 5;
}
