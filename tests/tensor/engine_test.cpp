// The tensor engine over a fake runtime: what it sends, in what order, what
// it caches and what it asks, with no worker processes.
#include "common/access.hpp"
#include "tensor/engine.hpp"
#include "tensor/fake_runtime.hpp"

#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <catch2/catch.hpp>

#include <future>

using namespace cox;
using namespace std::chrono_literals;
using cox::test::FakeRuntime;
using cox::test::SentFrame;
using wire::MsgType;

// An op with a CPU kernel and no meta kernel: its output metadata must be
// learned from a worker.
TORCH_LIBRARY(cox_engine_test, m) { m.def("no_meta(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(cox_engine_test, CPU, m) {
  m.impl("no_meta", [](const at::Tensor& x) { return x.clone(); });
}

namespace {

DeviceMesh mesh_of(FakeRuntime& rt, const std::vector<std::pair<std::string, int64_t>>& dims) {
  Shape shape(dims);
  auto info = std::make_shared<tensor::MeshInfo>();
  for (int64_t r : shape.ranks()) info->ranks.push_back(static_cast<int>(r));
  info->shape = shape;
  return cox::detail::Access::mesh(tensor::Engine::of(rt), std::move(info));
}

uint64_t id_of(const Tensor& t) { return cox::detail::Access::impl(t)->id; }

std::vector<std::string> types(const std::vector<SentFrame>& frames) {
  std::vector<std::string> out;
  for (const auto& f : frames) out.push_back(wire::to_string(f.type));
  return out;
}

std::vector<std::string> names(std::initializer_list<MsgType> ts) {
  std::vector<std::string> out;
  for (MsgType t : ts) out.push_back(wire::to_string(t));
  return out;
}

Tensor no_meta(const Tensor& x) { return call_op("cox_engine_test::no_meta", "", {x}).at(0); }

// Answers metadata requests with `metas`, and records what was asked.
struct MetaAnswers {
  std::mutex mu;
  std::vector<std::pair<int, uint64_t>> asked;
  FakeRuntime::Answer answer(std::vector<wire::TensorMeta> metas) {
    return [this, metas](int rank, uint64_t request) -> runtime::Runtime::Reply {
      std::lock_guard<std::mutex> lk(mu);
      asked.emplace_back(rank, request);
      wire::MetaReply r;
      r.request = request;
      r.metas = metas;
      return r;
    };
  }
};

wire::TensorMeta float_meta(std::vector<int64_t> sizes) {
  return wire::Meta::of(at::empty(sizes, at::TensorOptions().device(at::kMeta))).to_wire();
}

}  // namespace

TEST_CASE("an op is defined once, then sent to every worker of its mesh and to no other", "[engine]") {
  FakeRuntime rt(4);
  DeviceMesh mesh = mesh_of(rt, {{"dp", 2}, {"tp", 2}});
  Tensor a = zeros(mesh.slice("dp", 1), {2, 3});
  // Metadata from the meta kernel: no worker asked.
  REQUIRE(a.sizes() == std::vector<int64_t>{2, 3});
  REQUIRE(a.dtype() == at::kFloat);
  for (int r : {0, 1, 2, 3}) {
    auto frames = rt.take(r);
    // Every worker learns the op; only dp=1 (ranks 2, 3) runs it.
    REQUIRE(FakeRuntime::of_type(frames, MsgType::kDefineOp).size() == 1);
    const auto ops = FakeRuntime::of_type(frames, MsgType::kOp);
    REQUIRE(ops.size() == (r >= 2 ? 1u : 0u));
    if (r >= 2) {
      const auto op = ops[0]->as<wire::Op>();
      REQUIRE(op.outs.size() == 1);
      REQUIRE(op.outs[0] == id_of(a));
      REQUIRE(op.meta_request == 0);
    }
  }
  Tensor b = zeros(mesh.slice("dp", 1), {2, 3});
  for (int r : {2, 3}) REQUIRE(types(rt.take(r)) == names({MsgType::kOp}));
  REQUIRE(id_of(b) != id_of(a));
}

TEST_CASE("frees ride in front of the next op on each worker that held the tensor", "[engine]") {
  FakeRuntime rt(2);
  DeviceMesh mesh = mesh_of(rt, {{"x", 2}});
  uint64_t dead = 0;
  {
    Tensor t = ones(mesh, {4});
    dead = id_of(t);
  }
  rt.take(0);
  rt.take(1);
  Tensor u = ones(mesh, {4});
  for (int r : {0, 1}) {
    auto frames = rt.take(r);
    REQUIRE(types(frames) == names({MsgType::kFree, MsgType::kOp}));
    const auto f = frames[0].as<wire::Free>();
    REQUIRE(f.ids.size() == 1);
    REQUIRE(f.ids[0] == dead);
  }
  // A sync sends what is queued at once.
  { Tensor v = std::move(u); }
  mesh.sync();
  REQUIRE(rt.syncs() == 1);
  for (int r : {0, 1}) REQUIRE(types(rt.take(r)) == names({MsgType::kFree}));
}

TEST_CASE("an op without a meta kernel asks one worker once per signature", "[engine]") {
  FakeRuntime rt(2);
  MetaAnswers answers;
  rt.set_answer(answers.answer({float_meta({3})}));
  DeviceMesh mesh = mesh_of(rt, {{"x", 2}});
  Tensor x = zeros(mesh, {3});
  rt.take(0);
  rt.take(1);

  Tensor y = no_meta(x);
  const auto frames = rt.take(0);
  const auto asked = FakeRuntime::of_type(frames, MsgType::kOp);
  REQUIRE(asked.size() == 1);
  const auto op = asked[0]->as<wire::Op>();
  REQUIRE(op.meta_request != 0);
  REQUIRE(op.reporter == 0);  // the mesh's first worker reports
  REQUIRE(FakeRuntime::of_type(rt.take(1), MsgType::kOp)[0]->as<wire::Op>().meta_request == op.meta_request);
  REQUIRE(answers.asked.empty());  // nothing waits until the metadata is needed
  REQUIRE(y.sizes() == std::vector<int64_t>{3});
  REQUIRE(answers.asked.size() == 1);
  REQUIRE(answers.asked[0] == std::make_pair(0, op.meta_request));

  // The same signature again: known, nothing asked.
  Tensor z = no_meta(x);
  REQUIRE(FakeRuntime::of_type(rt.take(0), MsgType::kOp)[0]->as<wire::Op>().meta_request == 0);
  REQUIRE(z.sizes() == std::vector<int64_t>{3});
  REQUIRE(answers.asked.size() == 1);
  // Another signature: asked again.
  Tensor w = no_meta(zeros(mesh, {5}));
  REQUIRE(FakeRuntime::of_type(rt.take(0), MsgType::kOp).back()->as<wire::Op>().meta_request != 0);
}

TEST_CASE("an op that failed on the reporting worker makes error values, raised where they are read", "[engine]") {
  FakeRuntime rt(2);
  rt.set_answer([](int, uint64_t request) -> runtime::Runtime::Reply {
    wire::Failed f;
    f.request = request;
    f.op = "cox_engine_test::no_meta";
    f.message = "kernel failed";
    return f;
  });
  DeviceMesh mesh = mesh_of(rt, {{"x", 2}});
  Tensor y = no_meta(zeros(mesh, {3}));
  try {
    (void)y.sizes();
    FAIL("no error");
  } catch (const RemoteError& e) {
    REQUIRE(e.rank() == 0);
    REQUIRE(e.op() == "cox_engine_test::no_meta");
    REQUIRE(e.message() == "kernel failed");
  }
  rt.take(0);
  // An op reading it is still sent (the workers mark its output), and its
  // output carries the same error.
  Tensor z = y.add(1.0);
  REQUIRE(FakeRuntime::of_type(rt.take(0), MsgType::kOp).size() == 1);
  REQUIRE_THROWS_AS(z.sizes(), RemoteError);
}

TEST_CASE("a collective forms its groups over the mesh's dims and sets each communicator up once", "[engine]") {
  FakeRuntime rt(4);
  DeviceMesh mesh = mesh_of(rt, {{"dp", 2}, {"tp", 2}});
  Tensor t = ones(mesh, {8});
  all_reduce_(t, {"tp"});
  const auto rv = rt.rendezvous();
  REQUIRE(rv.size() == 2);
  REQUIRE(rv[0].second == std::vector<int>{0, 1});
  REQUIRE(rv[1].second == std::vector<int>{2, 3});
  std::vector<uint64_t> comm_of(4);
  for (int r = 0; r < 4; ++r) {
    auto frames = rt.take(r);
    const auto inits = FakeRuntime::of_type(frames, MsgType::kCommInit);
    REQUIRE(inits.size() == 1);
    const auto init = inits[0]->as<wire::CommInit>();
    REQUIRE(init.ranks == (r < 2 ? std::vector<int32_t>{0, 1} : std::vector<int32_t>{2, 3}));
    const auto colls = FakeRuntime::of_type(frames, MsgType::kCollective);
    REQUIRE(colls.size() == 1);
    comm_of[static_cast<size_t>(r)] = colls[0]->as<wire::Collective>().comm;
    REQUIRE(comm_of[static_cast<size_t>(r)] == init.comm);
  }
  REQUIRE(comm_of[0] == comm_of[1]);
  REQUIRE(comm_of[2] == comm_of[3]);
  REQUIRE(comm_of[0] != comm_of[2]);

  // Again: no new set-up.
  all_reduce_(t, {"tp"});
  REQUIRE(rt.rendezvous().size() == 2);
  for (int r = 0; r < 4; ++r) {
    auto frames = rt.take(r);
    REQUIRE(FakeRuntime::of_type(frames, MsgType::kCommInit).empty());
    REQUIRE(FakeRuntime::of_type(frames, MsgType::kCollective).size() == 1);
  }
  // A bad dim is the caller's error, and sends nothing.
  REQUIRE_THROWS_AS(all_reduce_(t, {"pp"}), InvalidArgument);
  for (int r = 0; r < 4; ++r) REQUIRE(rt.take(r).empty());
}

TEST_CASE("a lost worker fails the ops that need it and no others", "[engine]") {
  FakeRuntime rt(4);
  DeviceMesh mesh = mesh_of(rt, {{"dp", 2}, {"tp", 2}});
  rt.lose(3);
  try {
    ones(mesh, {2});
    FAIL("no error");
  } catch (const WorkerLost& e) {
    REQUIRE(e.rank() == 3);
  }
  // Nothing half-sent: the wait for room comes before any worker gets it.
  for (int r = 0; r < 3; ++r) REQUIRE(FakeRuntime::of_type(rt.take(r), MsgType::kOp).empty());
  Tensor t = ones(mesh.slice("dp", 0), {2});
  REQUIRE(FakeRuntime::of_type(rt.take(0), MsgType::kOp).size() == 1);
}

TEST_CASE("a thread waiting for a worker's report holds up no other thread", "[engine]") {
  FakeRuntime rt(2);
  std::promise<void> asked, go;
  std::shared_future<void> go_f = go.get_future().share();
  rt.set_answer([&](int, uint64_t request) -> runtime::Runtime::Reply {
    asked.set_value();
    go_f.wait();  // held until the other thread has sent its op
    wire::MetaReply r;
    r.request = request;
    r.metas = {float_meta({3})};
    return r;
  });
  DeviceMesh mesh = mesh_of(rt, {{"x", 2}});
  Tensor y = no_meta(zeros(mesh, {3}));
  rt.take(0);
  // Reading y in an op waits for its metadata, inside the engine.
  auto reader = std::async(std::launch::async, [&] { return y.add(1.0).sizes(); });
  REQUIRE(asked.get_future().wait_for(60s) == std::future_status::ready);
  Tensor other = ones(mesh, {7});  // would wait behind the reader under one engine lock
  REQUIRE(FakeRuntime::of_type(rt.take(0), MsgType::kOp).size() == 1);
  go.set_value();
  REQUIRE(reader.wait_for(60s) == std::future_status::ready);
  REQUIRE(reader.get() == std::vector<int64_t>{3});
}

TEST_CASE("threads that need the same pending metadata wait for one report", "[engine]") {
  FakeRuntime rt(2);
  std::promise<void> asked, go;
  std::shared_future<void> go_f = go.get_future().share();
  std::atomic<int> answers{0};
  rt.set_answer([&](int, uint64_t request) -> runtime::Runtime::Reply {
    if (answers++ == 0) asked.set_value();
    go_f.wait();
    wire::MetaReply r;
    r.request = request;
    r.metas = {float_meta({3})};
    return r;
  });
  DeviceMesh mesh = mesh_of(rt, {{"x", 2}});
  Tensor y = no_meta(zeros(mesh, {3}));
  auto first = std::async(std::launch::async, [&] { return y.sizes(); });
  REQUIRE(asked.get_future().wait_for(60s) == std::future_status::ready);
  // Two more readers while the first waits: one as a plain read, one
  // through an op (the encoder).
  auto second = std::async(std::launch::async, [&] { return y.sizes(); });
  auto third = std::async(std::launch::async, [&] { return y.add(1.0).sizes(); });
  go.set_value();
  for (auto* f : {&first, &second, &third}) {
    REQUIRE(f->wait_for(60s) == std::future_status::ready);
    REQUIRE(f->get() == std::vector<int64_t>{3});
  }
  REQUIRE(answers == 1);
}

TEST_CASE("after the runtime shuts down, calls throw and handles die quietly", "[engine]") {
  FakeRuntime rt(2);
  DeviceMesh mesh = mesh_of(rt, {{"x", 2}});
  Tensor t = ones(mesh, {2});
  rt.shutdown();
  REQUIRE_THROWS_WITH(ones(mesh, {2}), Catch::Contains("shut down"));
  t = Tensor();  // its release is dropped
  REQUIRE(rt.take(0).size() == 2);  // the op and its definition only
}
