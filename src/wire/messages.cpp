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
  }
  throw ProtocolError(fmt::format("unknown message type {}", static_cast<unsigned>(f.type)));
}

}  // namespace cox::wire
