// The worker's executor against bad messages from its controller, in
// process: each id, enum and count is checked before use, and ends in a
// ProtocolError (the worker exits saying why) or an error value reported
// back, never in a crash or another exception.
#include "fuzz/in_process_worker.hpp"

#include <catch2/catch.hpp>

namespace {

using namespace cox;
using namespace cox::wire;

struct Worker {
  Worker() {
    worker::Tensors::Hooks hooks;
    hooks.max_tensor_bytes = 1 << 20;
    hooks.connect = [](int index, int n, const collectives::CommOptions&, const collectives::Exchange&) {
      return std::make_unique<fuzz::Loopback>(index, n);
    };
    exec.emplace(0, at::Device(at::kCPU), *t.outbox, *t.reader, std::move(hooks));
  }
  template <class M>
  void run(const M& m) {
    const auto frame = encode_frame(m);
    exec->run(FrameView{Traits<M>::type, frame.data() + kFrameHeaderBytes + 1, frame.size() - kFrameHeaderBytes - 1});
  }
  // The replies so far, printed.
  std::vector<std::string> replies() {
    std::vector<std::string> out;
    t.drain([&](const FrameView& f) { out.push_back(describe(f)); });
    return out;
  }
  void comm(uint64_t id, std::vector<int32_t> ranks) {
    CommInit c;
    c.comm = id;
    c.timeout_ms = 1000;
    c.ranks = std::move(ranks);
    run(c);
  }
  void put(uint64_t id, std::vector<int64_t> sizes) {
    Put p;
    p.id = id;
    p.dtype = static_cast<uint8_t>(at::kFloat);
    p.sizes = sizes;
    int64_t n = 4;
    for (auto s : sizes) n *= s;
    p.nbytes = static_cast<uint64_t>(n);
    run(p);
    std::vector<uint8_t> zeros(static_cast<size_t>(n));
    if (n) run(PutData{id, 0, Bytes{zeros.data(), zeros.size()}});
  }
  fuzz::Transport t;
  std::optional<worker::Executor> exec;
};

// The message of the ProtocolError that f throws (another exception fails
// the test).
template <class F>
std::string protocol_error(F&& f) {
  try {
    f();
  } catch (const ProtocolError& e) {
    return e.what();
  }
  return "(no ProtocolError)";
}

Collective collective(CollectiveKind kind, std::vector<int64_t> sizes) {
  Collective c;
  c.comm = 1;
  c.kind = kind;
  c.in = 5;
  c.out = 6;
  c.dtype = static_cast<uint8_t>(at::kFloat);
  c.sizes = std::move(sizes);
  return c;
}

}  // namespace

TEST_CASE("op ids out of range are refused", "[worker]") {
  Worker w;
  REQUIRE_THAT(protocol_error([&] { w.run(DefineOp{0xffffffffu, "aten::neg", ""}); }), Catch::Matchers::Contains("op id 4294967295 is out of range"));
  REQUIRE_THROWS_AS(w.run(DefineOp{worker::Tensors::kMaxOpId, "aten::neg", ""}), ProtocolError);
  REQUIRE_THROWS_AS(w.run(DefineOp{3, "", ""}), ProtocolError);
  w.run(DefineOp{worker::Tensors::kMaxOpId - 1, "aten::neg", ""});
}

TEST_CASE("a put larger than the worker's limit becomes an error value", "[worker]") {
  Worker w;
  Put p;
  p.id = 1;
  p.dtype = static_cast<uint8_t>(at::kByte);
  p.sizes = {int64_t{1} << 60};
  p.nbytes = uint64_t{1} << 60;
  w.run(p);
  w.run(Fetch{9, 1});
  const auto r = w.replies();
  // Reported once when it fails, naming the error value; the fetch names it too.
  REQUIRE(r.size() == 2);
  REQUIRE_THAT(r[0], Catch::Matchers::StartsWith("error{") && Catch::Matchers::Contains("op=\"put\"") &&
                         Catch::Matchers::Contains("value=1}"));
  REQUIRE_THAT(r[1], Catch::Matchers::Contains("failed{request=9, op=\"put\"") && Catch::Matchers::Contains("value=1}"));
}

TEST_CASE("puts with bad metadata are protocol errors", "[worker]") {
  Worker w;
  Put p;
  p.id = 1;
  p.dtype = static_cast<uint8_t>(at::kFloat);
  p.sizes = {-4};
  REQUIRE_THAT(protocol_error([&] { w.run(p); }), Catch::Matchers::Contains("negative size"));
  p.sizes = {int64_t{1} << 62, 4};
  p.nbytes = 0;
  REQUIRE_THAT(protocol_error([&] { w.run(p); }), Catch::Matchers::Contains("overflows"));
  p.sizes = {2};
  p.dtype = 200;
  REQUIRE_THAT(protocol_error([&] { w.run(p); }), Catch::Matchers::Contains("unknown dtype"));
  p.dtype = static_cast<uint8_t>(at::kFloat);
  p.nbytes = 7;
  REQUIRE_THROWS_AS(w.run(p), ProtocolError);
}

TEST_CASE("enums inside op arguments are checked", "[worker]") {
  Worker w;
  w.run(DefineOp{1, "aten::zeros_like", ""});
  for (auto tag : {ArgTag::kScalarType, ArgTag::kLayout, ArgTag::kMemoryFormat}) {
    std::vector<uint8_t> frame;
    append_frame(frame, MsgType::kOp, [&](Writer& wr) {
      wr.put<uint32_t>(1);
      wr.put<uint16_t>(1);
      wr.put<uint8_t>(static_cast<uint8_t>(tag));
      wr.put<uint8_t>(200);
      wr.put<uint32_t>(0);
      wr.put<uint64_t>(0);
      wr.put<int32_t>(-1);
    });
    REQUIRE_THROWS_AS(w.exec->run(FrameView{MsgType::kOp, frame.data() + 5, frame.size() - 5}), ProtocolError);
  }
}

TEST_CASE("collectives check their reduce op, dims, root and dtype", "[worker]") {
  Worker w;
  w.comm(1, {0, 1});
  w.put(5, {2, 3});
  auto bad = collective(CollectiveKind::kAllReduce, {2, 3});
  bad.reduce = 9;
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("reduce op 9"));
  bad = collective(CollectiveKind::kAllGather, {2, 3});
  bad.a = 2;  // == ndim: once an out-of-bounds write
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("out of range"));
  bad = collective(CollectiveKind::kReduceScatter, {2, 3});
  bad.a = 1;  // 3 does not split among 2
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("does not split"));
  bad = collective(CollectiveKind::kBroadcast, {2, 3});
  bad.a = 2;
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("root 2"));
  bad = collective(CollectiveKind::kAllReduce, {2, 3});
  bad.dtype = 99;
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("unknown dtype"));
  bad = collective(CollectiveKind::kAllReduce, {int64_t{1} << 40});
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("exceeds"));
  bad = collective(CollectiveKind::kAllReduce, {2, 3});
  bad.in = 0;
  REQUIRE_THAT(protocol_error([&] { w.run(bad); }), Catch::Matchers::Contains("without an input"));
  // The good ones run on the loopback.
  w.run(collective(CollectiveKind::kAllGather, {2, 3}));
  w.run(Fetch{4, 6});
  const auto r = w.replies();
  REQUIRE(r.size() >= 1);
  REQUIRE_THAT(r.front(), Catch::Matchers::Contains("fetch_reply{request=4"));
}

TEST_CASE("communicators and transfers check their members and peers", "[worker]") {
  Worker w;
  REQUIRE_THAT(protocol_error([&] { w.comm(1, {0, 1, 0}); }), Catch::Matchers::Contains("repeat"));
  REQUIRE_THROWS_AS(w.comm(0, {0}), ProtocolError);
  REQUIRE_THROWS_AS(w.comm(2, {-1, 0}), ProtocolError);
  w.comm(1, {0, 1});
  REQUIRE_THAT(protocol_error([&] { w.comm(1, {0, 1}); }), Catch::Matchers::Contains("already set up"));
  w.put(5, {4});
  Transfer t;
  t.src = 5;
  t.out = 7;
  t.recv_comm = 1;
  t.recv_peer = 5;
  t.dtype = static_cast<uint8_t>(at::kFloat);
  t.sizes = {4};
  REQUIRE_THAT(protocol_error([&] { w.run(t); }), Catch::Matchers::Contains("peer 5"));
  t.recv_peer = 1;
  t.sends = {Transfer::Send{1, -1}};
  REQUIRE_THAT(protocol_error([&] { w.run(t); }), Catch::Matchers::Contains("peer -1"));
  t.sends = {Transfer::Send{1, 1}};
  w.run(t);  // to itself, through the loopback
  w.run(Fetch{3, 7});
  const auto r = w.replies();
  REQUIRE(r.size() >= 1);
  REQUIRE_THAT(r.front(), Catch::Matchers::Contains("fetch_reply{request=3"));
}

TEST_CASE("a remote call's output count is bounded", "[worker]") {
  Worker w;
  CallRemote c;
  c.name = "f";
  c.max_outputs = 0xffffffffu;
  REQUIRE_THAT(protocol_error([&] { w.run(c); }), Catch::Matchers::Contains("outputs"));
}
