// The messages that travel between the controller and its workers, and the
// frames that carry them.
//
// A frame is a u32 little-endian length, then that many bytes: a u8 message
// type and the message's fields (wire/codec.hpp). Several frames travel
// back to back in one write; each side scans whole frames out of what it
// reads, rejecting a bad length or type before looking at any payload.
#pragma once

#include "wire/codec.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace cox::wire {

constexpr uint32_t kMagic = 0x53584f43;  // "COXS"
constexpr uint16_t kProtocolVersion = 2;
constexpr size_t kFrameHeaderBytes = 4;
// Frames before authentication are tiny; a peer that announces more is refused.
constexpr size_t kMaxHandshakeFrame = 1024;
constexpr size_t kDefaultMaxFrame = size_t{1} << 30;

enum class MsgType : uint8_t {
  // Handshake (wire/handshake)
  kHello = 1,       // controller -> worker: protocol version and a challenge
  kHelloReply = 2,  // worker -> controller: rank, its proof, its challenge
  kWelcome = 3,     // controller -> worker: its proof, session parameters
  kReject = 4,      // either way: why the handshake failed

  // Controller -> worker
  kHeartbeat = 10,  // (also worker -> controller) liveness when otherwise idle
  kSync = 11,       // reply kSyncDone once everything before it was processed
  kShutdown = 12,   // finish everything before it, then exit 0
  kEcho = 13,       // reply kEchoReply with the same id and payload
  kSeq = 14,        // check that sequence numbers arrive in order
  kRaise = 15,      // fail as an operation would, with the given message
  kExit = 16,       // exit at once with the given code (tests supervision)
  kPrint = 17,      // write a line to stdout or stderr (tests output capture)
  kSleep = 18,      // block the stream for a while (tests waits and deadlines)

  // Controller -> worker: the tensor engine (tensor/engine, worker/tensors)
  kDefineOp = 40,     // op id -> aten name and overload
  kOp = 41,           // run an op: op id, boxed arguments, output ids
  kFree = 42,         // forget tensor ids
  kFetch = 43,        // reply with a tensor's value
  kPut = 44,          // store a tensor sent by the controller
  kSeed = 45,         // seed the random generators
  kBackward = 46,     // autograd backward from a tensor
  kGrad = 47,         // store a tensor's .grad() under a new id
  kGradMode = 48,     // enable or disable gradient recording
  kLoadLibrary = 49,  // load a library of remote functions; reply when done
  kCallRemote = 50,   // call a remote function
  kStats = 51,        // reply with the number of live tensors

  // Controller -> worker: collectives (tensor/collectives, worker/collectives)
  kCommInit = 52,          // join a communicator: its id and member ranks
  kCollective = 53,        // run a collective on a communicator
  kTransfer = 54,          // point to point: send a tensor, receive one, or both
  kRendezvousReply = 55,   // every member's blob for a communicator, or why not

  // Worker -> controller
  kSyncDone = 30,
  kEchoReply = 31,
  kError = 32,  // an operation failed: which one and why
  kLog = 33,    // a line of output, from workers whose output is not piped
  kRendezvous = 34,  // a member's blob for a communicator being set up
  kReply = 60,  // the answer to a request (fetch, metadata, stats...)
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

const char* to_string(MsgType t) noexcept;
bool is_known_type(uint8_t t) noexcept;

struct FrameView {
  MsgType type;
  const uint8_t* payload;
  size_t size;
};

// Appends one frame of type `t` whose payload `body(Writer&)` writes.
template <class F>
void append_frame(std::vector<uint8_t>& out, MsgType t, F&& body) {
  const size_t at = out.size();
  out.resize(at + kFrameHeaderBytes);
  Writer w(out);
  w.put<uint8_t>(static_cast<uint8_t>(t));
  body(w);
  const uint32_t len = static_cast<uint32_t>(out.size() - at - kFrameHeaderBytes);
  std::memcpy(out.data() + at, &len, sizeof len);
}

// Finds whole frames at the front of a byte range.
class FrameScanner {
 public:
  explicit FrameScanner(size_t max_frame) : max_frame_(max_frame) {}

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
      if (n - at - kFrameHeaderBytes < len) {
        if (need) *need = kFrameHeaderBytes + len;
        break;
      }
      const uint8_t type = data[at + kFrameHeaderBytes];
      f(FrameView{static_cast<MsgType>(type), data + at + kFrameHeaderBytes + 1, len - 1});
      at += kFrameHeaderBytes + len;
    }
    return at;
  }
  // The first frame of [data, data+n): sets *frame and returns its size in
  // bytes when it is whole; otherwise returns 0 and sets *need to the size
  // of the whole frame, when its header is there (else 0).
  size_t scan_one(const uint8_t* data, size_t n, std::optional<FrameView>* frame, size_t* need) const {
    *need = 0;
    if (n < kFrameHeaderBytes) return 0;
    uint32_t len;
    std::memcpy(&len, data, sizeof len);
    check_header(len, data, n, 0);
    if (n - kFrameHeaderBytes < len) {
      *need = kFrameHeaderBytes + len;
      return 0;
    }
    frame->emplace(FrameView{static_cast<MsgType>(data[kFrameHeaderBytes]), data + kFrameHeaderBytes + 1, len - 1});
    return kFrameHeaderBytes + len;
  }
  size_t max_frame() const noexcept { return max_frame_; }

 private:
  void check_header(uint32_t len, const uint8_t* data, size_t n, size_t at) const {
    if (len == 0 || len > max_frame_ || (n - at > kFrameHeaderBytes && !is_known_type(data[at + kFrameHeaderBytes]))) {
      bad_header(len, data, n, at);
    }
  }
  [[noreturn]] void bad_header(uint32_t len, const uint8_t* data, size_t n, size_t at) const;

  size_t max_frame_;
};

// --- messages --------------------------------------------------------------
// Each has kType, encode(Writer&) and decode(Reader&).

using Nonce = std::array<uint8_t, 32>;
using Mac = std::array<uint8_t, 32>;

struct Hello {
  static constexpr MsgType kType = MsgType::kHello;
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  Nonce nonce{};
  void encode(Writer& w) const;
  static Hello decode(Reader& r);
};

struct HelloReply {
  static constexpr MsgType kType = MsgType::kHelloReply;
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  int32_t rank = -1;
  Nonce nonce{};  // the worker's challenge to the controller
  Mac mac{};      // HMAC(token, "worker" | controller nonce | rank)
  std::string device;  // where this worker's tensors live: "cpu", "cuda:0"
  void encode(Writer& w) const;
  static HelloReply decode(Reader& r);
};

struct Welcome {
  static constexpr MsgType kType = MsgType::kWelcome;
  Mac mac{};  // HMAC(token, "controller" | worker nonce | rank)
  int32_t world_size = 0;
  uint32_t heartbeat_interval_ms = 0;
  uint32_t heartbeat_timeout_ms = 0;
  uint64_t max_frame = 0;
  void encode(Writer& w) const;
  static Welcome decode(Reader& r);
};

struct Reject {
  static constexpr MsgType kType = MsgType::kReject;
  std::string reason;
  void encode(Writer& w) const;
  static Reject decode(Reader& r);
};

struct Heartbeat {
  static constexpr MsgType kType = MsgType::kHeartbeat;
  void encode(Writer&) const {}
  static Heartbeat decode(Reader&) { return {}; }
};

struct Sync {
  static constexpr MsgType kType = MsgType::kSync;
  uint64_t id = 0;
  void encode(Writer& w) const { w.put(id); }
  static Sync decode(Reader& r) { return {r.get<uint64_t>("sync.id")}; }
};

struct SyncDone {
  static constexpr MsgType kType = MsgType::kSyncDone;
  uint64_t id = 0;
  void encode(Writer& w) const { w.put(id); }
  static SyncDone decode(Reader& r) { return {r.get<uint64_t>("sync_done.id")}; }
};

struct Shutdown {
  static constexpr MsgType kType = MsgType::kShutdown;
  void encode(Writer&) const {}
  static Shutdown decode(Reader&) { return {}; }
};

struct Echo {
  static constexpr MsgType kType = MsgType::kEcho;
  uint64_t id = 0;
  std::string payload;
  void encode(Writer& w) const;
  static Echo decode(Reader& r);
};

struct EchoReply {
  static constexpr MsgType kType = MsgType::kEchoReply;
  uint64_t id = 0;
  std::string payload;
  void encode(Writer& w) const;
  static EchoReply decode(Reader& r);
};

struct Seq {
  static constexpr MsgType kType = MsgType::kSeq;
  uint64_t n = 0;
  void encode(Writer& w) const { w.put(n); }
  static Seq decode(Reader& r) { return {r.get<uint64_t>("seq.n")}; }
};

struct Raise {
  static constexpr MsgType kType = MsgType::kRaise;
  std::string message;
  void encode(Writer& w) const { w.put_string(message); }
  static Raise decode(Reader& r) { return {r.get_string("raise.message")}; }
};

struct Exit {
  static constexpr MsgType kType = MsgType::kExit;
  int32_t code = 0;
  void encode(Writer& w) const { w.put(code); }
  static Exit decode(Reader& r) { return {r.get<int32_t>("exit.code")}; }
};

struct Sleep {
  static constexpr MsgType kType = MsgType::kSleep;
  uint32_t ms = 0;
  void encode(Writer& w) const { w.put(ms); }
  static Sleep decode(Reader& r) { return {r.get<uint32_t>("sleep.ms")}; }
};

enum class Stream : uint8_t { kStdout = 1, kStderr = 2 };

// Skips one encoded argument, checking its layout.
void skip_arg(Reader& r);

struct DefineOp {
  static constexpr MsgType kType = MsgType::kDefineOp;
  uint32_t op = 0;
  std::string name, overload;
  void encode(Writer& w) const;
  static DefineOp decode(Reader& r);
};

// kOp has no struct: the engine writes it field by field and the worker
// reads it straight onto a boxed stack. Layout: u32 op, u16 nargs, args,
// u16 nout, u64 ids (0 for an output that is an input written in place),
// u64 meta_request (0: none), i32 reporter (the rank that answers it).
void validate_op(Reader& r);

struct Free {
  static constexpr MsgType kType = MsgType::kFree;
  std::vector<uint64_t> ids;
  void encode(Writer& w) const;
  static Free decode(Reader& r);
};

struct Fetch {
  static constexpr MsgType kType = MsgType::kFetch;
  uint64_t request = 0;
  uint64_t id = 0;
  void encode(Writer& w) const { w.put(request); w.put(id); }
  static Fetch decode(Reader& r) {
    Fetch f;
    f.request = r.get<uint64_t>("fetch.request");
    f.id = r.get<uint64_t>("fetch.id");
    return f;
  }
};

struct Put {
  static constexpr MsgType kType = MsgType::kPut;
  uint64_t id = 0;
  uint8_t dtype = 0;
  bool requires_grad = false;
  std::vector<int64_t> sizes;
  std::string data;  // contiguous, row-major
  void encode(Writer& w) const;
  static Put decode(Reader& r);
};

struct Seed {
  static constexpr MsgType kType = MsgType::kSeed;
  uint64_t seed = 0;
  bool per_rank = false;
  void encode(Writer& w) const { w.put(seed); w.put<uint8_t>(per_rank); }
  static Seed decode(Reader& r) {
    Seed s;
    s.seed = r.get<uint64_t>("seed.seed");
    s.per_rank = r.get<uint8_t>("seed.per_rank") != 0;
    return s;
  }
};

struct Backward {
  static constexpr MsgType kType = MsgType::kBackward;
  uint64_t id = 0;
  uint64_t grad = 0;  // the gradient of `id` to start from (0: ones, for a scalar)
  void encode(Writer& w) const { w.put(id); w.put(grad); }
  static Backward decode(Reader& r) {
    Backward b;
    b.id = r.get<uint64_t>("backward.id");
    b.grad = r.get<uint64_t>("backward.grad");
    return b;
  }
};

struct Grad {
  static constexpr MsgType kType = MsgType::kGrad;
  uint64_t id = 0, out = 0;
  void encode(Writer& w) const { w.put(id); w.put(out); }
  static Grad decode(Reader& r) {
    Grad g;
    g.id = r.get<uint64_t>("grad.id");
    g.out = r.get<uint64_t>("grad.out");
    return g;
  }
};

struct GradMode {
  static constexpr MsgType kType = MsgType::kGradMode;
  bool enabled = true;
  void encode(Writer& w) const { w.put<uint8_t>(enabled); }
  static GradMode decode(Reader& r) { return {r.get<uint8_t>("grad_mode.enabled") != 0}; }
};

struct LoadLibrary {
  static constexpr MsgType kType = MsgType::kLoadLibrary;
  uint64_t request = 0;
  std::string path;
  void encode(Writer& w) const { w.put(request); w.put_string(path); }
  static LoadLibrary decode(Reader& r) {
    LoadLibrary l;
    l.request = r.get<uint64_t>("load_library.request");
    l.path = r.get_string("load_library.path");
    return l;
  }
};

struct CallRemote {
  static constexpr MsgType kType = MsgType::kCallRemote;
  std::string name;
  std::vector<uint64_t> inputs;
  std::vector<double> scalars;
  uint64_t out_base = 0;  // outputs get ids out_base, out_base+1, ...
  uint32_t max_outputs = 0;
  uint64_t meta_request = 0;
  int32_t reporter = -1;
  void encode(Writer& w) const;
  static CallRemote decode(Reader& r);
};

struct Stats {
  static constexpr MsgType kType = MsgType::kStats;
  uint64_t request = 0;
  void encode(Writer& w) const { w.put(request); }
  static Stats decode(Reader& r) { return {r.get<uint64_t>("stats.request")}; }
};

struct CommInit {
  static constexpr MsgType kType = MsgType::kCommInit;
  uint64_t comm = 0;
  uint32_t timeout_ms = 0;
  std::vector<int32_t> ranks;  // members, in group order
  // 0: a new communicator, set up through a rendezvous. Otherwise the
  // communicator this one splits from: every member of the parent receives
  // a CommInit with this parent at the same point of its stream, those in
  // none of the new groups with comm 0 and no ranks.
  uint64_t parent = 0;
  void encode(Writer& w) const;
  static CommInit decode(Reader& r);
};

enum class CollectiveKind : uint8_t {
  kAllReduce = 1,
  kReduceScatter = 2,
  kAllGather = 3,
  kAllToAll = 4,
  kBroadcast = 5,
  kBarrier = 6,
};
constexpr uint8_t kMaxCollectiveKind = 6;

struct Collective {
  static constexpr MsgType kType = MsgType::kCollective;
  uint64_t comm = 0;
  CollectiveKind kind = CollectiveKind::kAllReduce;
  uint8_t reduce = 0;  // collectives::ReduceOp
  int64_t a = 0;       // dim, split dim, or root
  int64_t b = 0;       // concat dim
  uint64_t in = 0;     // 0 for a barrier
  uint64_t out = 0;    // 0: the result goes into `in`
  uint8_t dtype = 0;   // the input's, as the controller knows it
  std::vector<int64_t> sizes;
  void encode(Writer& w) const;
  static Collective decode(Reader& r);
};

struct Transfer {
  static constexpr MsgType kType = MsgType::kTransfer;
  struct Send {
    uint64_t comm = 0;
    int32_t peer = 0;  // rank within that communicator
  };
  uint64_t tag = 0;
  uint64_t src = 0;  // tensor to send (0: none)
  std::vector<Send> sends;
  uint64_t out = 0;        // id for the received tensor (0: none)
  uint64_t recv_comm = 0;  // 0 with out set: out is src (this worker is on both sides)
  int32_t recv_peer = 0;
  uint8_t dtype = 0;  // of the tensor moved
  std::vector<int64_t> sizes;
  void encode(Writer& w) const;
  static Transfer decode(Reader& r);
};

struct Rendezvous {
  static constexpr MsgType kType = MsgType::kRendezvous;
  uint64_t comm = 0;
  std::string blob;
  void encode(Writer& w) const;
  static Rendezvous decode(Reader& r);
};

struct RendezvousReply {
  static constexpr MsgType kType = MsgType::kRendezvousReply;
  uint64_t comm = 0;
  bool ok = true;
  std::vector<std::string> blobs;  // ok: one per member
  std::string error;               // not ok
  void encode(Writer& w) const;
  static RendezvousReply decode(Reader& r);
};

struct Reply {
  static constexpr MsgType kType = MsgType::kReply;
  uint64_t request = 0;
  bool ok = true;
  std::string payload;  // the answer, or the error message
  void encode(Writer& w) const;
  static Reply decode(Reader& r);
};

struct Print {
  static constexpr MsgType kType = MsgType::kPrint;
  Stream stream = Stream::kStdout;
  std::string text;
  void encode(Writer& w) const;
  static Print decode(Reader& r);
};

struct Error {
  static constexpr MsgType kType = MsgType::kError;
  uint64_t index = 0;  // position of the failed message in the worker's stream
  std::string op;
  std::string message;
  void encode(Writer& w) const;
  static Error decode(Reader& r);
};

struct Log {
  static constexpr MsgType kType = MsgType::kLog;
  Stream stream = Stream::kStdout;
  std::string line;
  void encode(Writer& w) const;
  static Log decode(Reader& r);
};

template <class M>
void encode_frame(const M& m, std::vector<uint8_t>& out) {
  append_frame(out, M::kType, [&](Writer& w) { m.encode(w); });
}

template <class M>
std::vector<uint8_t> encode_frame(const M& m) {
  std::vector<uint8_t> out;
  encode_frame(m, out);
  return out;
}

// Decodes a frame's payload as M; the frame must be of M's type and hold
// exactly M's fields.
template <class M>
M decode(const FrameView& f) {
  if (f.type != M::kType) {
    throw ProtocolError(std::string("expected a ") + to_string(M::kType) + " message, got " + to_string(f.type));
  }
  Reader r(f.payload, f.size, to_string(M::kType));
  M m = M::decode(r);
  r.expect_end();
  return m;
}

// Decodes a frame as whatever its type says, discarding the result: throws
// ProtocolError exactly when a receiver of that type would.
void validate(const FrameView& f);

}  // namespace cox::wire
