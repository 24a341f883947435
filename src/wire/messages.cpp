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
}
HelloReply HelloReply::decode(Reader& r) {
  HelloReply h;
  h.magic = r.get<uint32_t>("hello_reply.magic");
  h.version = r.get<uint16_t>("hello_reply.version");
  h.rank = r.get<int32_t>("hello_reply.rank");
  get_array(r, h.nonce, "hello_reply.nonce");
  get_array(r, h.mac, "hello_reply.mac");
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
