// Message layouts and the frame scanner's error path.
#include "wire/messages.hpp"

#include <fmt/format.h>

namespace cox::wire {

const char* to_string(MsgType t) noexcept {
  switch (t) {
    case MsgType::kHello: return "hello";
    case MsgType::kHelloReply: return "hello_reply";
    case MsgType::kWelcome: return "welcome";
    case MsgType::kReject: return "reject";
    case MsgType::kHeartbeat: return "heartbeat";
    case MsgType::kSync: return "sync";
    case MsgType::kShutdown: return "shutdown";
    case MsgType::kEcho: return "echo";
    case MsgType::kSeq: return "seq";
    case MsgType::kRaise: return "raise";
    case MsgType::kExit: return "exit";
    case MsgType::kPrint: return "print";
    case MsgType::kSleep: return "sleep";
    case MsgType::kDefineOp: return "define_op";
    case MsgType::kOp: return "op";
    case MsgType::kFree: return "free";
    case MsgType::kFetch: return "fetch";
    case MsgType::kPut: return "put";
    case MsgType::kSeed: return "seed";
    case MsgType::kBackward: return "backward";
    case MsgType::kGrad: return "grad";
    case MsgType::kGradMode: return "grad_mode";
    case MsgType::kLoadLibrary: return "load_library";
    case MsgType::kCallRemote: return "call_remote";
    case MsgType::kStats: return "stats";
    case MsgType::kCommInit: return "comm_init";
    case MsgType::kCollective: return "collective";
    case MsgType::kTransfer: return "transfer";
    case MsgType::kRendezvousReply: return "rendezvous_reply";
    case MsgType::kRendezvous: return "rendezvous";
    case MsgType::kReply: return "reply";
    case MsgType::kSyncDone: return "sync_done";
    case MsgType::kEchoReply: return "echo_reply";
    case MsgType::kError: return "error";
    case MsgType::kLog: return "log";
  }
  return "unknown";
}

namespace {
struct KnownTypes {
  bool known[256] = {};
  KnownTypes() {
    for (int t = 0; t < 256; ++t) known[t] = std::string_view(to_string(static_cast<MsgType>(t))) != "unknown";
  }
};
const KnownTypes kKnownTypes;
}  // namespace

bool is_known_type(uint8_t t) noexcept { return kKnownTypes.known[t]; }

void FrameScanner::bad_header(uint32_t len, const uint8_t* data, size_t n, size_t at) const {
  if (len == 0) throw ProtocolError(fmt::format("malformed frame at byte {}: length 0 (a frame holds at least its type)", at));
  if (len > max_frame_) {
    throw ProtocolError(fmt::format("oversized frame at byte {}: length {} exceeds the maximum frame size {}", at,
                                    len, max_frame_));
  }
  (void)n;
  throw ProtocolError(fmt::format("malformed frame at byte {}: unknown message type {}", at,
                                  static_cast<unsigned>(data[at + kFrameHeaderBytes])));
}

namespace {
template <size_t N>
void put_array(Writer& w, const std::array<uint8_t, N>& a) { w.put_bytes(a.data(), N); }
template <size_t N>
void get_array(Reader& r, std::array<uint8_t, N>& a, const char* field) { r.get_bytes(a.data(), N, field); }
}  // namespace

void Hello::encode(Writer& w) const {
  w.put(magic);
  w.put(version);
  put_array(w, nonce);
}
Hello Hello::decode(Reader& r) {
  Hello h;
  h.magic = r.get<uint32_t>("hello.magic");
  h.version = r.get<uint16_t>("hello.version");
  get_array(r, h.nonce, "hello.nonce");
  return h;
}

void HelloReply::encode(Writer& w) const {
  w.put(magic);
  w.put(version);
  w.put(rank);
  put_array(w, nonce);
  put_array(w, mac);
  w.put_string(device);
}
HelloReply HelloReply::decode(Reader& r) {
  HelloReply h;
  h.magic = r.get<uint32_t>("hello_reply.magic");
  h.version = r.get<uint16_t>("hello_reply.version");
  h.rank = r.get<int32_t>("hello_reply.rank");
  get_array(r, h.nonce, "hello_reply.nonce");
  get_array(r, h.mac, "hello_reply.mac");
  h.device = r.get_string("hello_reply.device");
  return h;
}

void Welcome::encode(Writer& w) const {
  put_array(w, mac);
  w.put(world_size);
  w.put(heartbeat_interval_ms);
  w.put(heartbeat_timeout_ms);
  w.put(max_frame);
}
Welcome Welcome::decode(Reader& r) {
  Welcome m;
  get_array(r, m.mac, "welcome.mac");
  m.world_size = r.get<int32_t>("welcome.world_size");
  m.heartbeat_interval_ms = r.get<uint32_t>("welcome.heartbeat_interval_ms");
  m.heartbeat_timeout_ms = r.get<uint32_t>("welcome.heartbeat_timeout_ms");
  m.max_frame = r.get<uint64_t>("welcome.max_frame");
  return m;
}

void Reject::encode(Writer& w) const { w.put_string(reason); }
Reject Reject::decode(Reader& r) { return {r.get_string("reject.reason")}; }

void Echo::encode(Writer& w) const {
  w.put(id);
  w.put_string(payload);
}
Echo Echo::decode(Reader& r) {
  Echo e;
  e.id = r.get<uint64_t>("echo.id");
  e.payload = r.get_string("echo.payload");
  return e;
}

void EchoReply::encode(Writer& w) const {
  w.put(id);
  w.put_string(payload);
}
EchoReply EchoReply::decode(Reader& r) {
  EchoReply e;
  e.id = r.get<uint64_t>("echo_reply.id");
  e.payload = r.get_string("echo_reply.payload");
  return e;
}

namespace {
Stream get_stream(Reader& r, const char* field) {
  const auto s = r.get<uint8_t>(field);
  if (s != static_cast<uint8_t>(Stream::kStdout) && s != static_cast<uint8_t>(Stream::kStderr)) {
    throw ProtocolError(fmt::format("malformed {}: stream {} is neither stdout (1) nor stderr (2)", field,
                                    static_cast<unsigned>(s)));
  }
  return static_cast<Stream>(s);
}
}  // namespace

void Print::encode(Writer& w) const {
  w.put(static_cast<uint8_t>(stream));
  w.put_string(text);
}
Print Print::decode(Reader& r) {
  Print p;
  p.stream = get_stream(r, "print.stream");
  p.text = r.get_string("print.text");
  return p;
}

void Error::encode(Writer& w) const {
  w.put(index);
  w.put_string(op);
  w.put_string(message);
}
Error Error::decode(Reader& r) {
  Error e;
  e.index = r.get<uint64_t>("error.index");
  e.op = r.get_string("error.op");
  e.message = r.get_string("error.message");
  return e;
}

void Log::encode(Writer& w) const {
  w.put(static_cast<uint8_t>(stream));
  w.put_string(line);
}
Log Log::decode(Reader& r) {
  Log l;
  l.stream = get_stream(r, "log.stream");
  l.line = r.get_string("log.line");
  return l;
}

void skip_arg(Reader& r) {
  const uint8_t tag = r.get<uint8_t>("arg.tag");
  switch (static_cast<ArgTag>(tag)) {
    case ArgTag::kNone:
    case ArgTag::kDevice: return;
    case ArgTag::kTensor: r.get<uint64_t>("arg.tensor"); return;
    case ArgTag::kTensorList: {
      const uint16_t n = r.get<uint16_t>("arg.tensor_list.n");
      for (uint16_t i = 0; i < n; ++i) r.get<uint64_t>("arg.tensor_list.id");
      return;
    }
    case ArgTag::kInt: r.get<int64_t>("arg.int"); return;
    case ArgTag::kDouble: r.get<double>("arg.double"); return;
    case ArgTag::kBool: r.get<uint8_t>("arg.bool"); return;
    case ArgTag::kIntList: {
      const uint16_t n = r.get<uint16_t>("arg.int_list.n");
      for (uint16_t i = 0; i < n; ++i) r.get<int64_t>("arg.int_list.value");
      return;
    }
    case ArgTag::kScalarType: r.get<uint8_t>("arg.scalar_type"); return;
    case ArgTag::kString: r.get_string("arg.string"); return;
    case ArgTag::kLayout: r.get<uint8_t>("arg.layout"); return;
    case ArgTag::kMemoryFormat: r.get<uint8_t>("arg.memory_format"); return;
  }
  throw ProtocolError(fmt::format("malformed op: unknown argument tag {}", static_cast<unsigned>(tag)));
}

void validate_op(Reader& r) {
  r.get<uint32_t>("op.id");
  const uint16_t nargs = r.get<uint16_t>("op.nargs");
  for (uint16_t i = 0; i < nargs; ++i) skip_arg(r);
  const uint16_t nout = r.get<uint16_t>("op.nout");
  for (uint16_t i = 0; i < nout; ++i) r.get<uint64_t>("op.out");
  r.get<uint64_t>("op.meta_request");
  r.get<int32_t>("op.reporter");
}

void DefineOp::encode(Writer& w) const {
  w.put(op);
  w.put_string(name);
  w.put_string(overload);
}
DefineOp DefineOp::decode(Reader& r) {
  DefineOp d;
  d.op = r.get<uint32_t>("define_op.op");
  d.name = r.get_string("define_op.name");
  d.overload = r.get_string("define_op.overload");
  return d;
}

void Free::encode(Writer& w) const {
  w.put(static_cast<uint32_t>(ids.size()));
  for (auto id : ids) w.put(id);
}
Free Free::decode(Reader& r) {
  Free f;
  const uint32_t n = r.get<uint32_t>("free.n");
  if (n > r.remaining() / 8) throw ProtocolError(fmt::format("truncated free: {} ids announced, {} bytes remain", n, r.remaining()));
  f.ids.resize(n);
  for (auto& id : f.ids) id = r.get<uint64_t>("free.id");
  return f;
}

void Put::encode(Writer& w) const {
  w.put(id);
  w.put(dtype);
  w.put<uint8_t>(requires_grad);
  w.put(static_cast<uint16_t>(sizes.size()));
  for (auto s : sizes) w.put(s);
  w.put_string(data);
}
Put Put::decode(Reader& r) {
  Put p;
  p.id = r.get<uint64_t>("put.id");
  p.dtype = r.get<uint8_t>("put.dtype");
  p.requires_grad = r.get<uint8_t>("put.requires_grad") != 0;
  const uint16_t n = r.get<uint16_t>("put.ndim");
  p.sizes.resize(n);
  for (auto& s : p.sizes) s = r.get<int64_t>("put.size");
  p.data = r.get_string("put.data");
  return p;
}

void CallRemote::encode(Writer& w) const {
  w.put_string(name);
  w.put(static_cast<uint16_t>(inputs.size()));
  for (auto id : inputs) w.put(id);
  w.put(static_cast<uint16_t>(scalars.size()));
  for (auto s : scalars) w.put(s);
  w.put(out_base);
  w.put(max_outputs);
  w.put(meta_request);
  w.put(reporter);
}
CallRemote CallRemote::decode(Reader& r) {
  CallRemote c;
  c.name = r.get_string("call_remote.name");
  const uint16_t n = r.get<uint16_t>("call_remote.n_inputs");
  for (uint16_t i = 0; i < n; ++i) c.inputs.push_back(r.get<uint64_t>("call_remote.input"));
  const uint16_t m = r.get<uint16_t>("call_remote.n_scalars");
  for (uint16_t i = 0; i < m; ++i) c.scalars.push_back(r.get<double>("call_remote.scalar"));
  c.out_base = r.get<uint64_t>("call_remote.out_base");
  c.max_outputs = r.get<uint32_t>("call_remote.max_outputs");
  c.meta_request = r.get<uint64_t>("call_remote.meta_request");
  c.reporter = r.get<int32_t>("call_remote.reporter");
  return c;
}

void Reply::encode(Writer& w) const {
  w.put(request);
  w.put<uint8_t>(ok);
  w.put_string(payload);
}
Reply Reply::decode(Reader& r) {
  Reply p;
  p.request = r.get<uint64_t>("reply.request");
  p.ok = r.get<uint8_t>("reply.ok") != 0;
  p.payload = r.get_string("reply.payload");
  return p;
}

namespace {
template <class T>
void put_vector(Writer& w, const std::vector<T>& v) {
  w.put(static_cast<uint32_t>(v.size()));
  for (const T& x : v) w.put(x);
}
template <class T>
std::vector<T> get_vector(Reader& r, const char* what) {
  const uint32_t n = r.get<uint32_t>(what);
  if (n > r.remaining() / sizeof(T)) {
    throw ProtocolError(fmt::format("truncated {}: {} values announced, {} bytes remain", what, n, r.remaining()));
  }
  std::vector<T> v(n);
  for (auto& x : v) x = r.get<T>(what);
  return v;
}
}  // namespace

void CommInit::encode(Writer& w) const {
  w.put(comm);
  w.put(timeout_ms);
  put_vector(w, ranks);
  w.put(parent);
}
CommInit CommInit::decode(Reader& r) {
  CommInit m;
  m.comm = r.get<uint64_t>("comm_init.comm");
  m.timeout_ms = r.get<uint32_t>("comm_init.timeout_ms");
  m.ranks = get_vector<int32_t>(r, "comm_init.ranks");
  m.parent = r.get<uint64_t>("comm_init.parent");
  return m;
}

void Collective::encode(Writer& w) const {
  w.put(comm);
  w.put(static_cast<uint8_t>(kind));
  w.put(reduce);
  w.put(a);
  w.put(b);
  w.put(in);
  w.put(out);
  w.put(dtype);
  put_vector(w, sizes);
}
Collective Collective::decode(Reader& r) {
  Collective m;
  m.comm = r.get<uint64_t>("collective.comm");
  const uint8_t kind = r.get<uint8_t>("collective.kind");
  if (kind == 0 || kind > kMaxCollectiveKind) throw ProtocolError(fmt::format("unknown collective kind {}", kind));
  m.kind = static_cast<CollectiveKind>(kind);
  m.reduce = r.get<uint8_t>("collective.reduce");
  m.a = r.get<int64_t>("collective.a");
  m.b = r.get<int64_t>("collective.b");
  m.in = r.get<uint64_t>("collective.in");
  m.out = r.get<uint64_t>("collective.out");
  m.dtype = r.get<uint8_t>("collective.dtype");
  m.sizes = get_vector<int64_t>(r, "collective.sizes");
  return m;
}

void Transfer::encode(Writer& w) const {
  w.put(tag);
  w.put(src);
  w.put(static_cast<uint32_t>(sends.size()));
  for (const Send& s : sends) {
    w.put(s.comm);
    w.put(s.peer);
  }
  w.put(out);
  w.put(recv_comm);
  w.put(recv_peer);
  w.put(dtype);
  put_vector(w, sizes);
}
Transfer Transfer::decode(Reader& r) {
  Transfer m;
  m.tag = r.get<uint64_t>("transfer.tag");
  m.src = r.get<uint64_t>("transfer.src");
  const uint32_t n = r.get<uint32_t>("transfer.sends");
  if (n > r.remaining() / 12) throw ProtocolError(fmt::format("truncated transfer: {} sends announced", n));
  m.sends.resize(n);
  for (Send& s : m.sends) {
    s.comm = r.get<uint64_t>("transfer.send.comm");
    s.peer = r.get<int32_t>("transfer.send.peer");
  }
  m.out = r.get<uint64_t>("transfer.out");
  m.recv_comm = r.get<uint64_t>("transfer.recv_comm");
  m.recv_peer = r.get<int32_t>("transfer.recv_peer");
  m.dtype = r.get<uint8_t>("transfer.dtype");
  m.sizes = get_vector<int64_t>(r, "transfer.sizes");
  return m;
}

void Rendezvous::encode(Writer& w) const {
  w.put(comm);
  w.put_string(blob);
}
Rendezvous Rendezvous::decode(Reader& r) {
  Rendezvous m;
  m.comm = r.get<uint64_t>("rendezvous.comm");
  m.blob = r.get_string("rendezvous.blob");
  return m;
}

void RendezvousReply::encode(Writer& w) const {
  w.put(comm);
  w.put<uint8_t>(ok);
  w.put(static_cast<uint32_t>(blobs.size()));
  for (const auto& b : blobs) w.put_string(b);
  w.put_string(error);
}
RendezvousReply RendezvousReply::decode(Reader& r) {
  RendezvousReply m;
  m.comm = r.get<uint64_t>("rendezvous_reply.comm");
  m.ok = r.get<uint8_t>("rendezvous_reply.ok") != 0;
  const uint32_t n = r.get<uint32_t>("rendezvous_reply.blobs");
  if (n > r.remaining() / 4) throw ProtocolError(fmt::format("truncated rendezvous_reply: {} blobs announced", n));
  m.blobs.resize(n);
  for (auto& b : m.blobs) b = r.get_string("rendezvous_reply.blob");
  m.error = r.get_string("rendezvous_reply.error");
  return m;
}

void validate(const FrameView& f) {
  switch (f.type) {
    case MsgType::kHello: decode<Hello>(f); return;
    case MsgType::kHelloReply: decode<HelloReply>(f); return;
    case MsgType::kWelcome: decode<Welcome>(f); return;
    case MsgType::kReject: decode<Reject>(f); return;
    case MsgType::kHeartbeat: decode<Heartbeat>(f); return;
    case MsgType::kSync: decode<Sync>(f); return;
    case MsgType::kShutdown: decode<Shutdown>(f); return;
    case MsgType::kEcho: decode<Echo>(f); return;
    case MsgType::kSeq: decode<Seq>(f); return;
    case MsgType::kRaise: decode<Raise>(f); return;
    case MsgType::kExit: decode<Exit>(f); return;
    case MsgType::kPrint: decode<Print>(f); return;
    case MsgType::kSleep: decode<Sleep>(f); return;
    case MsgType::kSyncDone: decode<SyncDone>(f); return;
    case MsgType::kEchoReply: decode<EchoReply>(f); return;
    case MsgType::kError: decode<Error>(f); return;
    case MsgType::kLog: decode<Log>(f); return;
    case MsgType::kDefineOp: decode<DefineOp>(f); return;
    case MsgType::kOp: {
      Reader r(f.payload, f.size, "op");
      validate_op(r);
      r.expect_end();
      return;
    }
    case MsgType::kFree: decode<Free>(f); return;
    case MsgType::kCommInit: decode<CommInit>(f); return;
    case MsgType::kCollective: decode<Collective>(f); return;
    case MsgType::kTransfer: decode<Transfer>(f); return;
    case MsgType::kRendezvous: decode<Rendezvous>(f); return;
    case MsgType::kRendezvousReply: decode<RendezvousReply>(f); return;
    case MsgType::kFetch: decode<Fetch>(f); return;
    case MsgType::kPut: decode<Put>(f); return;
    case MsgType::kSeed: decode<Seed>(f); return;
    case MsgType::kBackward: decode<Backward>(f); return;
    case MsgType::kGrad: decode<Grad>(f); return;
    case MsgType::kGradMode: decode<GradMode>(f); return;
    case MsgType::kLoadLibrary: decode<LoadLibrary>(f); return;
    case MsgType::kCallRemote: decode<CallRemote>(f); return;
    case MsgType::kStats: decode<Stats>(f); return;
    case MsgType::kReply: decode<Reply>(f); return;
  }
  throw ProtocolError(fmt::format("unknown message type {}", static_cast<unsigned>(f.type)));
}

}  // namespace cox::wire
