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
  c.kind = static_cast<CollectiveKind>(kMaxCollectiveKind + 1);
  encode_frame(c, bad);
  require_protocol_error([&] { validate(scan_all(s, bad)[0]); }, "unknown collective kind");
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
  require_protocol_error([&] { decode<Print>(view(MsgType::kPrint, print)); }, "stream 7");
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
