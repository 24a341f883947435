// The codec and the frame scanner: round trips, and every malformed input
// we can think of rejected with a ProtocolError that says what was wrong.
#include "wire/messages.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace cox::wire;

namespace {

std::vector<FrameView> scan_all(const FrameScanner& s, const std::vector<uint8_t>& bytes, size_t* used = nullptr,
                                size_t* need = nullptr) {
  std::vector<FrameView> frames;
  size_t u = s.scan(bytes.data(), bytes.size(), [&](const FrameView& f) { frames.push_back(f); }, need);
  if (used) *used = u;
  return frames;
}

template <class F>
void require_protocol_error(F f, const std::string& needle) {
  try {
    f();
    FAIL("expected cox::ProtocolError mentioning '" << needle << "'");
  } catch (const cox::ProtocolError& e) {
    INFO("message: " << e.what());
    REQUIRE(std::string(e.what()).find(needle) != std::string::npos);
  }
}

std::vector<uint8_t> raw_frame(uint32_t len, std::vector<uint8_t> body) {
  std::vector<uint8_t> out(4);
  std::memcpy(out.data(), &len, 4);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

}  // namespace

TEST_CASE("messages round-trip through frames", "[wire]") {
  std::vector<uint8_t> buf;
  Error err;
  err.index = 77;
  err.op = "aten::mm";
  err.message = std::string("shapes \0 differ", 15);
  encode_frame(err, buf);
  encode_frame(Sync{42}, buf);
  Echo echo;
  echo.id = 9;
  echo.payload = std::string(100000, 'x');
  encode_frame(echo, buf);
  encode_frame(Print{Stream::kStderr, "line"}, buf);
  HelloReply hr;
  hr.rank = 3;
  hr.nonce[0] = 1;
  hr.mac[31] = 2;
  hr.device = "cuda:3";
  encode_frame(hr, buf);

  FrameScanner s(kDefaultMaxFrame);
  size_t used = 0;
  auto frames = scan_all(s, buf, &used);
  REQUIRE(used == buf.size());
  REQUIRE(frames.size() == 5);
  auto e2 = decode<Error>(frames[0]);
  REQUIRE(e2.index == 77);
  REQUIRE(e2.op == "aten::mm");
  REQUIRE(e2.message == err.message);
  REQUIRE(decode<Sync>(frames[1]).id == 42);
  REQUIRE(decode<Echo>(frames[2]).payload.size() == 100000);
  auto p = decode<Print>(frames[3]);
  REQUIRE(p.stream == Stream::kStderr);
  REQUIRE(p.text == "line");
  auto hr2 = decode<HelloReply>(frames[4]);
  REQUIRE(hr2.rank == 3);
  REQUIRE(hr2.nonce == hr.nonce);
  REQUIRE(hr2.mac == hr.mac);
  REQUIRE(hr2.device == "cuda:3");
}

TEST_CASE("collective messages round-trip, and bad ones are rejected", "[wire][collectives]") {
  std::vector<uint8_t> buf;
  CommInit init;
  init.comm = 5;
  init.timeout_ms = 1234;
  init.ranks = {3, 1, 4};
  init.parent = 2;
  encode_frame(init, buf);
  Collective c;
  c.comm = 5;
  c.kind = CollectiveKind::kAllToAll;
  c.reduce = 2;
  c.a = 1;
  c.b = -1;
  c.in = 10;
  c.out = 11;
  c.dtype = 6;
  c.sizes = {12, 0, 7};
  encode_frame(c, buf);
  Transfer t;
  t.tag = 99;
  t.src = 10;
  t.sends = {{7, 1}, {8, 0}};
  t.out = 12;
  t.recv_comm = 9;
  t.recv_peer = 1;
  t.sizes = {2, 2};
  encode_frame(t, buf);
  encode_frame(Rendezvous{5, std::string("a\0b", 3)}, buf);
  RendezvousReply rr;
  rr.comm = 5;
  rr.blobs = {"x", "", "zz"};
  encode_frame(rr, buf);

  FrameScanner s(kDefaultMaxFrame);
  auto frames = scan_all(s, buf);
  REQUIRE(frames.size() == 5);
  auto init2 = decode<CommInit>(frames[0]);
  REQUIRE(init2.comm == 5);
  REQUIRE(init2.timeout_ms == 1234);
  REQUIRE(init2.ranks == init.ranks);
  REQUIRE(init2.parent == 2);
  auto c2 = decode<Collective>(frames[1]);
  REQUIRE(c2.kind == CollectiveKind::kAllToAll);
  REQUIRE((c2.reduce == 2 && c2.a == 1 && c2.b == -1 && c2.in == 10 && c2.out == 11 && c2.dtype == 6));
  REQUIRE(c2.sizes == c.sizes);
  auto t2 = decode<Transfer>(frames[2]);
  REQUIRE((t2.tag == 99 && t2.src == 10 && t2.out == 12 && t2.recv_comm == 9 && t2.recv_peer == 1));
  REQUIRE(t2.sends.size() == 2);
  REQUIRE((t2.sends[0].comm == 7 && t2.sends[0].peer == 1 && t2.sends[1].comm == 8));
  REQUIRE(t2.sizes == t.sizes);
  REQUIRE(decode<Rendezvous>(frames[3]).blob == std::string("a\0b", 3));
  auto rr2 = decode<RendezvousReply>(frames[4]);
  REQUIRE(rr2.ok);
  REQUIRE(rr2.blobs == rr.blobs);

  // An unknown collective kind, and a list longer than its frame.
  std::vector<uint8_t> bad;
  c.kind = static_cast<CollectiveKind>(7);
  encode_frame(c, bad);
  require_protocol_error([&] { validate(scan_all(s, bad)[0]); }, "field 'collective.kind' at offset 9: value 7 is out of range [1, 6]");
  bad.clear();
  append_frame(bad, MsgType::kCommInit, [](Writer& w) {
    w.put<uint64_t>(1);
    w.put<uint32_t>(10);
    w.put<uint32_t>(1u << 30);
  });
  require_protocol_error([&] { validate(scan_all(s, bad)[0]); }, "comm_init.ranks");
}

TEST_CASE("the scanner stops at an incomplete frame and says how much it needs", "[wire]") {
  std::vector<uint8_t> buf;
  encode_frame(Sync{1}, buf);
  encode_frame(Sync{2}, buf);
  FrameScanner s(1024);
  for (size_t cut = 0; cut <= buf.size(); ++cut) {
    std::vector<uint8_t> part(buf.begin(), buf.begin() + long(cut));
    size_t used = 0, need = 0;
    auto frames = scan_all(s, part, &used, &need);
    const size_t one = buf.size() / 2;
    REQUIRE(frames.size() == cut / one);
    REQUIRE(used == frames.size() * one);
    if (cut % one >= kFrameHeaderBytes) REQUIRE(need == one);
  }
}

TEST_CASE("malformed frames are rejected with a reason", "[wire][errors]") {
  FrameScanner s(4096);
  require_protocol_error([&] { scan_all(s, raw_frame(0, {})); }, "length 0");
  require_protocol_error([&] { scan_all(s, raw_frame(5000, {11})); }, "length 5000 exceeds the maximum frame size 4096");
  require_protocol_error([&] { scan_all(s, raw_frame(0xffffffffu, {})); }, "oversized frame");
  require_protocol_error([&] { scan_all(s, raw_frame(1, {200})); }, "unknown message type 200");
  require_protocol_error([&] { scan_all(s, raw_frame(3, {0, 1, 2})); }, "unknown message type 0");
  // A bad frame after a good one is found at its offset.
  std::vector<uint8_t> two = encode_frame(Sync{1});
  auto bad = raw_frame(1, {99});
  two.insert(two.end(), bad.begin(), bad.end());
  require_protocol_error([&] { scan_all(s, two); }, "at byte 13");
}

TEST_CASE("malformed payloads are rejected with the field that failed", "[wire][errors]") {
  auto view = [](MsgType t, const std::vector<uint8_t>& payload) { return FrameView{t, payload.data(), payload.size()}; };
  std::vector<uint8_t> short_sync = {1, 2, 3};
  require_protocol_error([&] { decode<Sync>(view(MsgType::kSync, short_sync)); },
                         "truncated sync: field 'sync.id' needs 8 bytes at offset 0, but only 3 remain");
  std::vector<uint8_t> long_sync(9, 0);
  require_protocol_error([&] { decode<Sync>(view(MsgType::kSync, long_sync)); }, "1 trailing bytes");
  // A string whose length runs past the frame.
  std::vector<uint8_t> raise = {0xff, 0xff, 0xff, 0x7f, 'a'};
  require_protocol_error([&] { decode<Raise>(view(MsgType::kRaise, raise)); },
                         "field 'raise.message' needs 2147483647 bytes");
  std::vector<uint8_t> print = {7, 0, 0, 0, 0};
  require_protocol_error([&] { decode<Print>(view(MsgType::kPrint, print)); }, "print.stream");
  require_protocol_error([&] { decode<Sync>(view(MsgType::kEcho, long_sync)); }, "expected a sync message, got echo");
  std::vector<uint8_t> empty;
  require_protocol_error([&] { decode<HelloReply>(view(MsgType::kHelloReply, empty)); }, "hello_reply.magic");
}

TEST_CASE("random bytes never crash the decoders", "[wire][fuzz]") {
  std::mt19937 rng(1234);
  FrameScanner s(1 << 16);
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<uint8_t> bytes(rng() % 64);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    if (bytes.size() >= 5 && iter % 2) {  // plausible header, random payload
      uint32_t len = static_cast<uint32_t>(bytes.size() - 4);
      std::memcpy(bytes.data(), &len, 4);
      bytes[4] = static_cast<uint8_t>(std::vector<int>{11, 13, 14, 15, 16, 17, 30, 31, 32, 33, 1, 2, 3, 4}[rng() % 14]);
    }
    try {
      s.scan(bytes.data(), bytes.size(), [](const FrameView& f) {
        try {
          switch (f.type) {
            case MsgType::kSync: decode<Sync>(f); break;
            case MsgType::kEcho: decode<Echo>(f); break;
            case MsgType::kRaise: decode<Raise>(f); break;
            case MsgType::kPrint: decode<Print>(f); break;
            case MsgType::kError: decode<Error>(f); break;
            case MsgType::kLog: decode<Log>(f); break;
            case MsgType::kHelloReply: decode<HelloReply>(f); break;
            case MsgType::kWelcome: decode<Welcome>(f); break;
            case MsgType::kReject: decode<Reject>(f); break;
            default: break;
          }
        } catch (const cox::ProtocolError&) {
        }
      });
    } catch (const cox::ProtocolError&) {
    }
  }
  SUCCEED("no crash on 20000 random inputs");
}

namespace {

// A handler that records which message it got.
struct Recorder {
  std::string got;
  template <class M>
  void on(const M&) {
    got = Traits<M>::name;
  }
};

template <class M>
void round_trip(const M& m) {
  const auto frame = encode_frame(m);
  FrameScanner s(kDefaultMaxFrame);
  auto frames = scan_all(s, frame);
  REQUIRE(frames.size() == 1);
  REQUIRE(frames[0].type == Traits<M>::type);
  const M back = decode<M>(frames[0]);
  // Equal encodings: every declared field survived.
  REQUIRE(encode_frame(back) == frame);
  REQUIRE(to_string(back) == to_string(m));
  REQUIRE(describe(frames[0]) == to_string(m));
  validate(frames[0]);
}

}  // namespace

TEST_CASE("every declared message round-trips, prints and validates", "[wire]") {
  // Default values, for each message in the list.
#define COX_TEST_ROUND_TRIP(Name, id, dir, str) round_trip(Name{});
  COX_WIRE_MESSAGES(COX_TEST_ROUND_TRIP)
#undef COX_TEST_ROUND_TRIP
  // And some with content, views included.
  std::vector<uint8_t> bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7);
  PutData d;
  d.id = 3;
  d.offset = uint64_t{5} << 32;  // offsets are 64-bit
  d.data = Bytes{bytes.data(), bytes.size()};
  round_trip(d);
  REQUIRE(decode<PutData>(FrameView{MsgType::kPutData, encode_frame(d).data() + 5, encode_frame(d).size() - 5}).offset ==
          d.offset);
  std::vector<uint64_t> ids = {1, 2, 3};
  Free f;
  f.ids = Ids{reinterpret_cast<const uint8_t*>(ids.data()), 3};
  round_trip(f);
  REQUIRE(to_string(f) == "free{ids=[1, 2, 3]}");
  FetchReply fr;
  fr.request = 9;
  fr.meta.dtype = 6;
  fr.meta.sizes = {2, 3};
  fr.meta.strides = {3, 1};
  fr.nbytes = uint64_t{6} << 33;
  round_trip(fr);
  Failed fail;
  fail.request = 4;
  fail.op = "all_reduce";
  fail.message = "peer gone";
  fail.peers = {1, 2};
  round_trip(fail);
  MetaReply mr;
  mr.metas = {fr.meta, fr.meta};
  round_trip(mr);
}

TEST_CASE("dispatch calls the handler's on() for the message, and refuses one for the other side", "[wire]") {
  Recorder r;
  dispatch<Dir::kToWorker>(scan_all(FrameScanner(4096), encode_frame(Sync{1}))[0], r);
  REQUIRE(r.got == "sync");
  dispatch<Dir::kToController>(scan_all(FrameScanner(4096), encode_frame(SyncDone{1}))[0], r);
  REQUIRE(r.got == "sync_done");
  dispatch<Dir::kToWorker>(scan_all(FrameScanner(4096), encode_frame(Heartbeat{}))[0], r);
  REQUIRE(r.got == "heartbeat");
  auto frame = encode_frame(SyncDone{1});
  require_protocol_error([&] { dispatch<Dir::kToWorker>(scan_all(FrameScanner(4096), frame)[0], r); },
                         "a sync_done message is for the controller, not a worker");
  frame = encode_frame(Hello{});
  require_protocol_error([&] { dispatch<Dir::kToController>(scan_all(FrameScanner(4096), frame)[0], r); },
                         "a hello message is for the handshake");
}

TEST_CASE("a chunk header is the start of the frame encode_frame writes", "[wire]") {
  std::vector<uint8_t> bytes(77, 5);
  FetchData d;
  d.request = 12;
  d.offset = 1 << 20;
  d.data = Bytes{bytes.data(), bytes.size()};
  const auto frame = encode_frame(d);
  std::array<uint8_t, kChunkOverhead> head;
  chunk_header(head, MsgType::kFetchData, 12, 1 << 20, 77);
  REQUIRE(frame.size() == head.size() + 77);
  REQUIRE(std::equal(head.begin(), head.end(), frame.begin()));
  REQUIRE(chunk_bytes(65536) <= 65536 - kChunkOverhead);
  REQUIRE(chunk_bytes(size_t{1} << 30) == kMaxChunk);
}

TEST_CASE("messages above the frame limit travel as fragments and come back whole", "[wire]") {
  const size_t limit = GENERATE(size_t{4096}, size_t{65536});
  Echo big;
  big.id = 5;
  big.payload.resize(300000);
  for (size_t i = 0; i < big.payload.size(); ++i) big.payload[i] = static_cast<char>(i * 13);
  std::vector<uint8_t> stream = encode_frame(Sync{1});
  encode_frame(big, stream);
  encode_frame(Sync{2}, stream);
  // The sender's view: every frame within the limit.
  std::vector<uint8_t> sent;
  size_t fragments = 0;
  split_frames(
      stream.data(), stream.size(), limit, [&](const uint8_t* p, size_t n) { sent.insert(sent.end(), p, p + n); },
      [&](const std::array<uint8_t, kFragmentOverhead>& h, const uint8_t* p, size_t n, bool) {
        sent.insert(sent.end(), h.begin(), h.end());
        sent.insert(sent.end(), p, p + n);
        ++fragments;
      });
  REQUIRE(fragments == (big.payload.size() + 12 + 1 + limit - kFragmentOverhead + kFrameHeaderBytes - 1) /
                           (limit - kFragmentOverhead + kFrameHeaderBytes));
  // The receiver's: a scanner with that limit, and an assembler.
  FrameScanner s(limit);
  Assembler a;
  std::vector<std::string> got;
  s.scan(sent.data(), sent.size(), [&](const FrameView& f) {
    if (auto whole = a.feed(f)) {
      got.push_back(describe(*whole));
      if (whole->type == MsgType::kEcho) REQUIRE(decode<Echo>(*whole).payload == big.payload);
    }
  });
  REQUIRE(got.size() == 3);
  REQUIRE(got[0] == "sync{id=1}");
  REQUIRE(got[2] == "sync{id=2}");
  REQUIRE(a.idle());
}

TEST_CASE("bad fragments are rejected", "[wire][errors]") {
  std::vector<uint8_t> piece(10, 1);
  auto frag = [&](uint64_t total, size_t n) {
    Fragment f;
    f.total = total;
    f.piece = Bytes{piece.data(), n};
    return encode_frame(f);
  };
  FrameScanner s(4096);
  {
    Assembler a;
    require_protocol_error([&] { a.feed(scan_all(s, frag(uint64_t{1} << 40, 10))[0]); }, "at most");
  }
  {
    Assembler a;
    a.feed(scan_all(s, frag(15, 10))[0]);
    require_protocol_error([&] { a.feed(scan_all(s, frag(16, 5))[0]); }, "inside one of 15 bytes");
  }
  {
    Assembler a;
    a.feed(scan_all(s, frag(15, 10))[0]);
    require_protocol_error([&] { a.feed(scan_all(s, frag(15, 10))[0]); }, "overruns");
  }
  {
    Assembler a;  // a whole message of an unknown type
    piece.assign(10, 0);
    require_protocol_error([&] { a.feed(scan_all(s, frag(10, 10))[0]); }, "unknown type 0");
  }
}

TEST_CASE("append_chunks writes the frames encode_frame would, each within the limit", "[wire]") {
  std::vector<uint8_t> data(10000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i);
  std::vector<uint8_t> got, want;
  append_chunks(got, MsgType::kPutData, 4, data.data(), data.size(), 4096);
  const size_t chunk = chunk_bytes(4096);
  for (size_t off = 0; off < data.size(); off += chunk) {
    PutData d;
    d.id = 4;
    d.offset = off;
    d.data = Bytes{data.data() + off, std::min(chunk, data.size() - off)};
    encode_frame(d, want);
  }
  REQUIRE(got == want);
  REQUIRE(scan_all(FrameScanner(4096), got).size() == (data.size() + chunk - 1) / chunk);
}
