// The messages that travel between the controller and its workers, and the
// frames that carry them.
//
// A frame is a u32 little-endian length, then that many bytes: a u8 message
// type and the message's fields (wire/codec.hpp). Several frames travel
// back to back in one write; each side scans whole frames out of what it
// reads, rejecting a bad length or type before looking at any payload. In
// an authenticated session (attach mode, over TCP) every frame after the
// handshake is followed by a 16-byte tag outside its length
// (transport/session_mac.hpp); the messages themselves do not change.
//
// Every message is declared once: a struct whose static visit() names its
// fields, and one line in COX_WIRE_MESSAGES (its type number, who receives
// it and its printed name). From these come encode, decode (with
// validation), printing, and dispatch: a receiver's handler must have an
// on(M) for every message addressed to it, or dispatch() does not compile.
//
// No frame is larger than the receiver's limit (max_frame_bytes). Tensor
// data travels in chunks (Put + PutData, FetchReply + FetchData) that the
// receiver writes straight into place; any other message that outgrows the
// limit is cut into Fragment frames by the sender and put back together by
// the receiver (wire::Assembler).
#pragma once

#include "wire/codec.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace cox::wire {

constexpr uint32_t kMagic = 0x53584f43;  // "COXS"
// 4: frames of an authenticated (TCP) session carry a 16-byte tag after
// them; PeerLost; heartbeats carry the executor's progress; CommInit the
// members' hosts. 5: Error and Failed name the error value of a failure.
constexpr uint16_t kProtocolVersion = 5;
constexpr size_t kFrameHeaderBytes = 4;
// Frames before authentication are tiny; a peer that announces more is refused.
constexpr size_t kMaxHandshakeFrame = 1024;
constexpr size_t kDefaultMaxFrame = size_t{1} << 30;
// The smallest frame limit a peer may set: room for every fixed-size
// message and for a fragment or chunk with a useful payload.
constexpr size_t kMinMaxFrame = 4096;
// Tensor data goes in chunks of at most this much (less where the frame
// limit is lower): small enough that control messages are never stuck for
// long behind one, large enough that headers cost nothing.
constexpr size_t kMaxChunk = size_t{4} << 20;
// A message put back together from fragments may be as large as one frame
// could describe; the receiver's memory grows with the pieces that come.
constexpr size_t kMaxMessage = 0xffffffffu;

// Who receives a message.
enum class Dir : uint8_t {
  kHandshake,     // read by the handshake (transport/handshake), before the stream starts
  kTransport,     // consumed by the transport itself (fragments)
  kToWorker,      // the worker's executor
  kToController,  // the controller's I/O thread
  kBoth,          // either side
};

// Boxed arguments of an op, as they travel (tensor/args).
enum class ArgTag : uint8_t {
  kNone = 0,
  kTensor = 1,      // u64 id
  kTensorList = 2,  // u16 n, u64 ids
  kInt = 3,         // i64
  kDouble = 4,      // f64
  kBool = 5,        // u8
  kIntList = 6,     // u16 n, i64...
  kScalarType = 7,  // u8
  kString = 8,      // string
  kDevice = 9,      // (none): the worker's own device
  kLayout = 10,     // u8
  kMemoryFormat = 11,  // u8
};
constexpr uint8_t kMaxArgTag = 11;

// Skips one encoded argument, checking its layout.
void skip_arg(Reader& r);

enum class Stream : uint8_t { kStdout = 1, kStderr = 2 };
COX_WIRE_ENUM(Stream, 1, 2);

enum class CollectiveKind : uint8_t {
  kAllReduce = 1,
  kReduceScatter = 2,
  kAllGather = 3,
  kAllToAll = 4,
  kBroadcast = 5,
  kBarrier = 6,
};
COX_WIRE_ENUM(CollectiveKind, 1, 6);

using Nonce = std::array<uint8_t, 32>;
using Mac = std::array<uint8_t, 32>;

// A tensor's metadata as it travels (wire::Meta converts).
struct TensorMeta {
  uint8_t dtype = 0;  // at::ScalarType
  std::vector<int64_t> sizes, strides;
  int64_t storage_offset = 0;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.dtype, "dtype"), v(s.sizes, "sizes"), v(s.strides, "strides"), v(s.storage_offset, "storage_offset");
  }
};

// --- handshake (transport/handshake) ------------------------------------------

struct Hello {  // controller -> worker: protocol version and a challenge
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  Nonce nonce{};
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.magic, "magic"), v(s.version, "version"), v(s.nonce, "nonce"); }
};

struct HelloReply {  // worker -> controller: rank, its proof, its challenge
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  int32_t rank = -1;
  Nonce nonce{};  // the worker's challenge to the controller
  Mac mac{};      // HMAC(token, "worker" | controller nonce | rank)
  std::string device;  // where this worker's tensors live: "cpu", "cuda:0"
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.magic, "magic"), v(s.version, "version"), v(s.rank, "rank"), v(s.nonce, "nonce"), v(s.mac, "mac"),
        v(s.device, "device");
  }
};

struct Welcome {  // controller -> worker: its proof, session parameters
  Mac mac{};  // HMAC(token, "controller" | worker nonce | rank)
  int32_t world_size = 0;
  uint32_t heartbeat_interval_ms = 0;
  uint32_t heartbeat_timeout_ms = 0;
  uint64_t max_frame = 0;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.mac, "mac"), v(s.world_size, "world_size"), v(s.heartbeat_interval_ms, "heartbeat_interval_ms"),
        v(s.heartbeat_timeout_ms, "heartbeat_timeout_ms"), v(s.max_frame, "max_frame");
  }
};

struct Reject {  // either way: why the handshake failed
  std::string reason;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.reason, "reason"); }
};

// --- transport ------------------------------------------------------------------

// A piece of a message larger than the frame limit: `total` is the size of
// the whole message (type byte and fields); pieces follow one another with
// no other fragmented message between them.
struct Fragment {
  uint64_t total = 0;
  Bytes piece;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.total, "total"), v(s.piece, "piece"); }
};

// Liveness, both ways. A worker's also says what its executor is doing:
// the controller's status() and op_timeout read it (the controller's own
// heartbeats leave the fields empty).
struct Heartbeat {
  uint64_t started = 0;  // messages the executor has started so far
  bool busy = false;     // running message `started` (else waiting for work)
  uint32_t busy_ms = 0;  // for about this long
  std::string doing;     // what that message is: "collective all_reduce", "op aten::mm"
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.started, "started"), v(s.busy, "busy"), v(s.busy_ms, "busy_ms"), v(s.doing, "doing");
  }
};

// --- controller -> worker: the runtime --------------------------------------------

struct Sync {  // reply SyncDone once everything before it was processed
  uint64_t id = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"); }
};
// A worker was lost: every communicator it belongs to is aborted at once
// (a survivor blocked in a collective with it is not left waiting), and
// no later one with it can form. Sent on the control lane; a worker's I/O
// thread acts on it even while its executor is busy.
struct PeerLost {
  int32_t rank = -1;
  std::string reason;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.rank, "rank"), v(s.reason, "reason"); }
};
struct Shutdown {  // finish everything before it, then exit 0
  template <class S, class V>
  static void visit(S&, V&) {}
};
struct Echo {  // reply EchoReply with the same id and payload
  uint64_t id = 0;
  std::string payload;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"), v(s.payload, "payload"); }
};
struct Seq {  // check that sequence numbers arrive in order
  uint64_t n = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.n, "n"); }
};
struct Raise {  // fail as an operation would, with the given message
  std::string message;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.message, "message"); }
};
struct Exit {  // exit at once with the given code (tests supervision)
  int32_t code = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.code, "code"); }
};
struct Print {  // write a line to stdout or stderr (tests output capture)
  Stream stream = Stream::kStdout;
  std::string text;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.stream, "stream"), v(s.text, "text"); }
};
struct Sleep {  // block the stream for a while (tests waits and deadlines)
  uint32_t ms = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.ms, "ms"); }
};

// --- controller -> worker: the tensor engine (tensor/engine, worker/tensors) ----------

struct DefineOp {  // op id -> aten name and overload
  uint32_t op = 0;
  std::string name, overload;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.op, "op"), v(s.name, "name"), v(s.overload, "overload"); }
};

// Run an op. The engine writes it field by field (tensor/op_encoder.cpp
// and Engine::call), in this layout: outs are ids (0 for an output that is an
// input written in place); meta_request (0: none) asks `reporter` to answer
// with the outputs' metadata.
struct Op {
  uint32_t op = 0;
  OpArgs args;
  Ids outs;
  uint64_t meta_request = 0;
  int32_t reporter = -1;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.op, "op"), v(s.args, "args"), v(s.outs, "outs"), v(s.meta_request, "meta_request"), v(s.reporter, "reporter");
  }
};

struct Free {  // forget tensor ids
  Ids ids;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.ids, "ids"); }
};

struct Fetch {  // answer FetchReply + FetchData (or Failed) with a tensor's value
  uint64_t request = 0;
  uint64_t id = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"), v(s.id, "id"); }
};

// Store a tensor sent by the controller: this header, then PutData chunks
// covering [0, nbytes) in order.
struct Put {
  uint64_t id = 0;
  uint8_t dtype = 0;
  bool requires_grad = false;
  std::vector<int64_t> sizes;
  uint64_t nbytes = 0;  // contiguous, row-major
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.id, "id"), v(s.dtype, "dtype"), v(s.requires_grad, "requires_grad"), v(s.sizes, "sizes"),
        v(s.nbytes, "nbytes");
  }
};
struct PutData {
  uint64_t id = 0;
  uint64_t offset = 0;
  Bytes data;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"), v(s.offset, "offset"), v(s.data, "data"); }
};

struct Seed {  // seed the random generators
  uint64_t seed = 0;
  bool per_rank = false;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.seed, "seed"), v(s.per_rank, "per_rank"); }
};
struct Backward {  // autograd backward from a tensor
  uint64_t id = 0;
  uint64_t grad = 0;  // the gradient of `id` to start from (0: ones, for a scalar)
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"), v(s.grad, "grad"); }
};
struct Grad {  // store a tensor's .grad() under a new id
  uint64_t id = 0, out = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"), v(s.out, "out"); }
};
struct GradMode {  // enable or disable gradient recording
  bool enabled = true;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.enabled, "enabled"); }
};
struct LoadLibrary {  // load a library of remote functions; answer Done or Failed
  uint64_t request = 0;
  std::string path;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"), v(s.path, "path"); }
};
struct CallRemote {  // call a remote function
  std::string name;
  std::vector<uint64_t> inputs;
  std::vector<double> scalars;
  uint64_t out_base = 0;  // outputs get ids out_base, out_base+1, ...
  uint32_t max_outputs = 0;
  uint64_t meta_request = 0;
  int32_t reporter = -1;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.name, "name"), v(s.inputs, "inputs"), v(s.scalars, "scalars"), v(s.out_base, "out_base"),
        v(s.max_outputs, "max_outputs"), v(s.meta_request, "meta_request"), v(s.reporter, "reporter");
  }
};
struct Stats {  // answer StatsReply
  uint64_t request = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"); }
};

// --- controller -> worker: collectives (tensor/collectives, worker/collectives) -------

struct CommInit {  // join a communicator: its id and member ranks
  uint64_t comm = 0;
  uint32_t timeout_ms = 0;
  std::vector<int32_t> ranks;  // members, in group order
  // 0: a new communicator, set up through a rendezvous. Otherwise the
  // communicator this one splits from: every member of the parent receives
  // a CommInit with this parent at the same point of its stream, those in
  // none of the new groups with comm 0 and no ranks.
  uint64_t parent = 0;
  // Each member's host as the controller sees it (the address its control
  // connection came from; empty for a local worker): a worker advertises to
  // its peers the address of the interface that routes to them.
  std::vector<std::string> hosts;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.comm, "comm"), v(s.timeout_ms, "timeout_ms"), v(s.ranks, "ranks"), v(s.parent, "parent"), v(s.hosts, "hosts");
  }
};

struct Collective {  // run a collective on a communicator
  uint64_t comm = 0;
  CollectiveKind kind = CollectiveKind::kAllReduce;
  uint8_t reduce = 0;  // collectives::ReduceOp
  int64_t a = 0;       // dim, split dim, or root
  int64_t b = 0;       // concat dim
  uint64_t in = 0;     // 0 for a barrier
  uint64_t out = 0;    // 0: the result goes into `in`
  uint8_t dtype = 0;   // the input's, as the controller knows it
  std::vector<int64_t> sizes;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.comm, "comm"), v(s.kind, "kind"), v(s.reduce, "reduce"), v(s.a, "a"), v(s.b, "b"), v(s.in, "in"),
        v(s.out, "out"), v(s.dtype, "dtype"), v(s.sizes, "sizes");
  }
};

struct Transfer {  // point to point: send a tensor, receive one, or both
  struct Send {
    uint64_t comm = 0;
    int32_t peer = 0;  // rank within that communicator
    template <class S, class V>
    static void visit(S& s, V& v) { v(s.comm, "comm"), v(s.peer, "peer"); }
  };
  uint64_t tag = 0;
  uint64_t src = 0;  // tensor to send (0: none)
  std::vector<Send> sends;
  uint64_t out = 0;        // id for the received tensor (0: none)
  uint64_t recv_comm = 0;  // 0 with out set: out is src (this worker is on both sides)
  int32_t recv_peer = 0;
  uint8_t dtype = 0;  // of the tensor moved
  std::vector<int64_t> sizes;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.tag, "tag"), v(s.src, "src"), v(s.sends, "sends"), v(s.out, "out"), v(s.recv_comm, "recv_comm"),
        v(s.recv_peer, "recv_peer"), v(s.dtype, "dtype"), v(s.sizes, "sizes");
  }
};

struct RendezvousReply {  // every member's blob for a communicator, or why not
  uint64_t comm = 0;
  bool ok = true;
  std::vector<std::string> blobs;  // ok: one per member
  std::string error;               // not ok
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.comm, "comm"), v(s.ok, "ok"), v(s.blobs, "blobs"), v(s.error, "error"); }
};

// --- worker -> controller ------------------------------------------------------------

struct SyncDone {
  uint64_t id = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"); }
};
struct EchoReply {
  uint64_t id = 0;
  std::string payload;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.id, "id"), v(s.payload, "payload"); }
};
struct Error {  // an operation failed: which one and why
  uint64_t index = 0;  // position of the failed message in the worker's stream
  std::string op;
  std::string message;
  // The error value the failure made: the id of the first tensor it was
  // stored as (the same on every worker that ran the op), 0 for none. A
  // fetch of a value carrying it answers Failed with the same id.
  uint64_t value = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.index, "index"), v(s.op, "op"), v(s.message, "message"), v(s.value, "value"); }
};
struct Log {  // a line of output, from workers whose output is not piped
  Stream stream = Stream::kStdout;
  std::string line;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.stream, "stream"), v(s.line, "line"); }
};
struct Rendezvous {  // a member's blob for a communicator being set up
  uint64_t comm = 0;
  std::string blob;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.comm, "comm"), v(s.blob, "blob"); }
};

// Replies to requests, one type each.

// A fetched tensor: its metadata (contiguous) and size, then FetchData
// chunks covering [0, nbytes) in order.
struct FetchReply {
  uint64_t request = 0;
  TensorMeta meta;
  uint64_t nbytes = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"), v(s.meta, "meta"), v(s.nbytes, "nbytes"); }
};
struct FetchData {
  uint64_t request = 0;
  uint64_t offset = 0;
  Bytes data;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"), v(s.offset, "offset"), v(s.data, "data"); }
};
// The outputs' metadata, for an op or remote function without a meta kernel.
struct MetaReply {
  uint64_t request = 0;
  std::vector<TensorMeta> metas;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"), v(s.metas, "metas"); }
};
struct StatsReply {
  uint64_t request = 0;
  int64_t live = 0;  // tensors in the worker's table
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"), v(s.live, "live"); }
};
struct Done {  // a request that returns nothing succeeded
  uint64_t request = 0;
  template <class S, class V>
  static void visit(S& s, V& v) { v(s.request, "request"); }
};
struct Failed {  // a request failed
  uint64_t request = 0;
  std::string op;
  std::string message;
  // For a communication failure: the (global) ranks it depended on; the
  // controller reports WorkerLost when one of them is gone.
  std::vector<int32_t> peers;
  // For an error value: the failure's own id (Error::value), 0 for none.
  uint64_t value = 0;
  template <class S, class V>
  static void visit(S& s, V& v) {
    v(s.request, "request"), v(s.op, "op"), v(s.message, "message"), v(s.peers, "peers"), v(s.value, "value");
  }
};

// --- the list ------------------------------------------------------------------------
// X(Name, type number, receiver, printed name). Type numbers are the wire
// format: never reuse one.
#define COX_WIRE_MESSAGES(X)                                  \
  X(Hello, 1, kHandshake, "hello")                            \
  X(HelloReply, 2, kHandshake, "hello_reply")                 \
  X(Welcome, 3, kHandshake, "welcome")                        \
  X(Reject, 4, kHandshake, "reject")                          \
  X(Fragment, 5, kTransport, "fragment")                      \
  X(Heartbeat, 10, kBoth, "heartbeat")                        \
  X(Sync, 11, kToWorker, "sync")                              \
  X(Shutdown, 12, kToWorker, "shutdown")                      \
  X(Echo, 13, kToWorker, "echo")                              \
  X(Seq, 14, kToWorker, "seq")                                \
  X(Raise, 15, kToWorker, "raise")                            \
  X(Exit, 16, kToWorker, "exit")                              \
  X(Print, 17, kToWorker, "print")                            \
  X(Sleep, 18, kToWorker, "sleep")                            \
  X(PeerLost, 19, kToWorker, "peer_lost")                     \
  X(SyncDone, 30, kToController, "sync_done")                 \
  X(EchoReply, 31, kToController, "echo_reply")               \
  X(Error, 32, kToController, "error")                        \
  X(Log, 33, kToController, "log")                            \
  X(Rendezvous, 34, kToController, "rendezvous")              \
  X(FetchReply, 35, kToController, "fetch_reply")             \
  X(FetchData, 36, kToController, "fetch_data")               \
  X(MetaReply, 37, kToController, "meta_reply")               \
  X(StatsReply, 38, kToController, "stats_reply")             \
  X(Done, 39, kToController, "done")                          \
  X(DefineOp, 40, kToWorker, "define_op")                     \
  X(Op, 41, kToWorker, "op")                                  \
  X(Free, 42, kToWorker, "free")                              \
  X(Fetch, 43, kToWorker, "fetch")                            \
  X(Put, 44, kToWorker, "put")                                \
  X(Seed, 45, kToWorker, "seed")                              \
  X(Backward, 46, kToWorker, "backward")                      \
  X(Grad, 47, kToWorker, "grad")                              \
  X(GradMode, 48, kToWorker, "grad_mode")                     \
  X(LoadLibrary, 49, kToWorker, "load_library")               \
  X(CallRemote, 50, kToWorker, "call_remote")                 \
  X(Stats, 51, kToWorker, "stats")                            \
  X(CommInit, 52, kToWorker, "comm_init")                     \
  X(Collective, 53, kToWorker, "collective")                  \
  X(Transfer, 54, kToWorker, "transfer")                      \
  X(RendezvousReply, 55, kToWorker, "rendezvous_reply")       \
  X(PutData, 56, kToWorker, "put_data")                       \
  X(Failed, 60, kToController, "failed")

enum class MsgType : uint8_t {
#define COX_WIRE_ENUM_ENTRY(Name, id, dir, str) k##Name = id,
  COX_WIRE_MESSAGES(COX_WIRE_ENUM_ENTRY)
#undef COX_WIRE_ENUM_ENTRY
};

// Each message's type and receiver, from the list.
template <class M>
struct Traits;
#define COX_WIRE_TRAITS(Name, id, dir, str)           \
  template <>                                        \
  struct Traits<Name> {                              \
    static constexpr MsgType type = MsgType::k##Name; \
    static constexpr Dir receiver = Dir::dir;        \
    static constexpr const char* name = str;         \
  };
COX_WIRE_MESSAGES(COX_WIRE_TRAITS)
#undef COX_WIRE_TRAITS

const char* to_string(MsgType t) noexcept;
bool is_known_type(uint8_t t) noexcept;

struct FrameView {
  MsgType type;
  const uint8_t* payload;
  size_t size;
};

[[noreturn]] void frame_too_long(MsgType t, uint64_t len);

// Appends one frame of type `t` whose payload `body(Writer&)` writes.
template <class F>
void append_frame(std::vector<uint8_t>& out, MsgType t, F&& body) {
  const size_t at = out.size();
  out.resize(at + kFrameHeaderBytes);
  Writer w(out);
  w.put<uint8_t>(static_cast<uint8_t>(t));
  body(w);
  const uint64_t len = out.size() - at - kFrameHeaderBytes;
  if (__builtin_expect(len > 0xffffffffu, 0)) frame_too_long(t, len);
  const auto len32 = static_cast<uint32_t>(len);
  std::memcpy(out.data() + at, &len32, sizeof len32);
}
template <class M>
void encode(const M& m, Writer& w) {
  EncodeVisitor e{w};
  M::visit(m, e);
}

template <class M>
void encode_frame(const M& m, std::vector<uint8_t>& out) {
  append_frame(out, Traits<M>::type, [&](Writer& w) { encode(m, w); });
}

template <class M>
std::vector<uint8_t> encode_frame(const M& m) {
  std::vector<uint8_t> out;
  encode_frame(m, out);
  return out;
}

[[noreturn]] void wrong_type(MsgType expected, MsgType got);

// Decodes a frame's payload as M; the frame must be of M's type and hold
// exactly M's fields. Views in M (Bytes, Ids, OpArgs) point into the frame.
template <class M>
M decode(const FrameView& f) {
  if (__builtin_expect(f.type != Traits<M>::type, 0)) wrong_type(Traits<M>::type, f.type);
  Reader r(f.payload, f.size, Traits<M>::name);
  M m;
  DecodeVisitor d{r};
  M::visit(m, d);
  r.expect_end();
  return m;
}

// "fetch{request=3, id=7}"
template <class M>
std::string to_string(const M& m) {
  std::string out = Traits<M>::name;
  out += '{';
  PrintVisitor p{out};
  M::visit(m, p);
  out += '}';
  return out;
}

// Decodes a frame as whatever its type says, discarding the result: throws
// ProtocolError exactly when a receiver of that type would.
void validate(const FrameView& f);
// The frame decoded and printed (or why it does not decode), for diagnostics.
std::string describe(const FrameView& f);

[[noreturn]] void not_for(MsgType t, Dir receiver);

// Decodes `f` and calls h.on(M) with it. The handler must accept every
// message addressed to `R` (a missing on() is a compile error); a message
// addressed elsewhere is a ProtocolError.
template <Dir R, class H>
void dispatch(const FrameView& f, H&& h) {
  switch (f.type) {
#define COX_WIRE_DISPATCH(Name, id, dir, str)                        \
  case MsgType::k##Name:                                             \
    if constexpr (Dir::dir == R || Dir::dir == Dir::kBoth) {         \
      h.on(decode<Name>(f));                                         \
      return;                                                        \
    } else {                                                         \
      not_for(f.type, R);                                            \
    }
    COX_WIRE_MESSAGES(COX_WIRE_DISPATCH)
#undef COX_WIRE_DISPATCH
  }
  not_for(f.type, R);
}

// Finds whole frames at the front of a byte range.
//
// `trailer`: bytes that follow each frame outside its length (the tag of an
// authenticated session, transport/session_mac.hpp; 0 otherwise). A frame is
// whole only with its trailer; the FrameView excludes it, and the trailer
// begins at payload + size.
class FrameScanner {
 public:
  explicit FrameScanner(size_t max_frame, size_t trailer = 0) : max_frame_(max_frame), trailer_(trailer) {}

  // Calls f(FrameView) for each complete frame at the start of [data,
  // data+n) and returns the number of bytes they span. Throws ProtocolError
  // for an empty, oversized or unknown frame. *need, when given, is set to
  // the size of the whole next (incomplete) frame, or 0.
  template <class F>
  size_t scan(const uint8_t* data, size_t n, F&& f, size_t* need = nullptr) const {
    size_t at = 0;
    if (need) *need = 0;
    while (n - at >= kFrameHeaderBytes) {
      uint32_t len;
      std::memcpy(&len, data + at, sizeof len);
      check_header(len, data, n, at);
      if (n - at - kFrameHeaderBytes < size_t{len} + trailer_) {
        if (need) *need = kFrameHeaderBytes + len + trailer_;
        break;
      }
      const uint8_t type = data[at + kFrameHeaderBytes];
      f(FrameView{static_cast<MsgType>(type), data + at + kFrameHeaderBytes + 1, len - 1});
      at += kFrameHeaderBytes + len + trailer_;
    }
    return at;
  }
  // The first frame of [data, data+n): sets *frame and returns its size in
  // bytes (trailer included) when it is whole; otherwise returns 0 and sets
  // *need to the size of the whole frame, when its header is there (else 0).
  size_t scan_one(const uint8_t* data, size_t n, std::optional<FrameView>* frame, size_t* need) const {
    *need = 0;
    if (n < kFrameHeaderBytes) return 0;
    uint32_t len;
    std::memcpy(&len, data, sizeof len);
    check_header(len, data, n, 0);
    if (n - kFrameHeaderBytes < size_t{len} + trailer_) {
      *need = kFrameHeaderBytes + len + trailer_;
      return 0;
    }
    frame->emplace(FrameView{static_cast<MsgType>(data[kFrameHeaderBytes]), data + kFrameHeaderBytes + 1, len - 1});
    return kFrameHeaderBytes + len + trailer_;
  }
  size_t max_frame() const noexcept { return max_frame_; }
  size_t trailer() const noexcept { return trailer_; }

 private:
  void check_header(uint32_t len, const uint8_t* data, size_t n, size_t at) const {
    if (len == 0 || len > max_frame_ || (n - at > kFrameHeaderBytes && !is_known_type(data[at + kFrameHeaderBytes]))) {
      bad_header(len, data, n, at);
    }
  }
  [[noreturn]] void bad_header(uint32_t len, const uint8_t* data, size_t n, size_t at) const;

  size_t max_frame_;
  size_t trailer_;
};

// --- messages larger than a frame -------------------------------------------------------

// The largest fragment piece or tensor data chunk that fits a frame limit.
constexpr size_t kFragmentOverhead = kFrameHeaderBytes + 1 + 8 + 8;          // type, total, piece length
constexpr size_t kChunkOverhead = kFrameHeaderBytes + 1 + 8 + 8 + 8;         // type, id, offset, data length
inline size_t chunk_bytes(size_t max_frame) noexcept {
  return std::min(kMaxChunk, max_frame - kChunkOverhead) & ~size_t{63};
}
// The first bytes of a PutData or FetchData frame (they share a layout:
// id or request, offset, data) whose `n` data bytes follow.
inline void chunk_header(std::array<uint8_t, kChunkOverhead>& h, MsgType type, uint64_t id, uint64_t offset,
                         uint64_t n) {
  const uint32_t len = static_cast<uint32_t>(kChunkOverhead - kFrameHeaderBytes + n);
  std::memcpy(h.data(), &len, 4);
  h[4] = static_cast<uint8_t>(type);
  std::memcpy(h.data() + 5, &id, 8);
  std::memcpy(h.data() + 13, &offset, 8);
  std::memcpy(h.data() + 21, &n, 8);
}

// Appends [data, data+n) as PutData or FetchData frames (copied) of at most
// chunk_bytes(max_frame) each, for `id` (a tensor id or a request).
inline void append_chunks(std::vector<uint8_t>& out, MsgType type, uint64_t id, const uint8_t* data, uint64_t n,
                          size_t max_frame) {
  const size_t chunk = chunk_bytes(max_frame);
  for (uint64_t off = 0; off < n; off += chunk) {
    const uint64_t k = std::min<uint64_t>(chunk, n - off);
    std::array<uint8_t, kChunkOverhead> h;
    chunk_header(h, type, id, off, k);
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), data + off, data + off + k);
  }
}

// Walks [data, data+n), which holds whole frames, for a sender: calls
// whole(ptr, size) for each frame within `max_frame`, and for each larger
// one frag(header, piece, size, last) per Fragment that carries it (the
// header is the Fragment frame's first kFragmentOverhead bytes; the piece
// points into `data`).
template <class Whole, class Frag>
void split_frames(const uint8_t* data, size_t n, size_t max_frame, Whole&& whole, Frag&& frag) {
  size_t at = 0;
  while (at < n) {
    uint32_t len;
    std::memcpy(&len, data + at, sizeof len);
    if (len <= max_frame) {
      whole(data + at, kFrameHeaderBytes + size_t{len});
    } else {
      const uint8_t* body = data + at + kFrameHeaderBytes;
      const size_t room = max_frame - (kFragmentOverhead - kFrameHeaderBytes);
      for (size_t off = 0; off < len; off += room) {
        const uint64_t k = std::min<size_t>(room, len - off);
        const uint64_t total = len;
        std::array<uint8_t, kFragmentOverhead> h;
        const uint32_t flen = static_cast<uint32_t>(kFragmentOverhead - kFrameHeaderBytes + k);
        std::memcpy(h.data(), &flen, 4);
        h[4] = static_cast<uint8_t>(MsgType::kFragment);
        std::memcpy(h.data() + 5, &total, 8);
        std::memcpy(h.data() + 13, &k, 8);
        frag(h, body + off, static_cast<size_t>(k), off + k == len);
      }
    }
    at += kFrameHeaderBytes + size_t{len};
  }
}

// Puts fragmented messages back together on the receiving side. feed() takes
// each frame in order: a Fragment is kept (and nullopt returned) until its
// message is whole, then the whole message is returned; any other frame is
// returned as it is (control messages may arrive between the fragments of a
// data message).
class Assembler {
 public:
  std::optional<FrameView> feed(const FrameView& f);
  bool idle() const noexcept { return total_ == 0; }

 private:
  std::vector<uint8_t> buf_;
  uint64_t total_ = 0;
};

}  // namespace cox::wire
