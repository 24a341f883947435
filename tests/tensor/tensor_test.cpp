// The tensor engine against local libtorch: every op family on identical
// inputs, creation and seeds, metadata, errors, freeing, autograd, remote
// functions, sub-meshes. Real worker processes.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <cox/bucket.hpp>
#include <cox/optim.hpp>
#include <cox/tensor.hpp>

#include <catch2/catch.hpp>

using namespace cox;
using namespace std::chrono_literals;

namespace {

// One controller for the whole file: workers start once.
Controller& controller() {
  static Controller ctl = [] {
    ControllerOptions o;
    o.workers = 4;
    o.worker_path = COX_TEST_WORKER;
    return Controller::local(o);
  }();
  return ctl;
}

DeviceMesh mesh() { return controller().mesh({{"dp", 2}, {"tp", 2}}); }

// The remote result on every worker equals `expected`, and the controller's
// metadata equals the fetched shards'.
void require_same(const Tensor& remote, const at::Tensor& expected, double tol = 1e-5) {
  INFO("expected sizes " << expected.sizes() << " dtype " << expected.scalar_type());
  REQUIRE(remote.sizes() == expected.sizes().vec());
  REQUIRE(remote.dtype() == expected.scalar_type());
  for (const at::Tensor& shard : remote.fetch_all(30000ms)) {
    REQUIRE(shard.sizes() == expected.sizes());
    REQUIRE(shard.scalar_type() == expected.scalar_type());
    if (at::isFloatingType(expected.scalar_type())) {
      REQUIRE(at::allclose(shard, expected, tol, tol));
    } else {
      REQUIRE(at::equal(shard, expected));
    }
  }
}

// Bit for bit, on every worker.
void require_equal(const Tensor& remote, const at::Tensor& expected) {
  INFO("expected sizes " << expected.sizes() << " dtype " << expected.scalar_type());
  REQUIRE(remote.dtype() == expected.scalar_type());
  for (const at::Tensor& shard : remote.fetch_all(30000ms)) REQUIRE(at::equal(shard, expected));
}

at::Tensor local_randn(std::vector<int64_t> sizes, uint64_t seed) {
  at::manual_seed(seed);
  return at::randn(sizes);
}

}  // namespace

TEST_CASE("arithmetic and matrix ops match libtorch", "[tensor][ops]") {
  DeviceMesh m = mesh();
  at::Tensor a = local_randn({4, 5}, 1), b = local_randn({4, 5}, 2), c = local_randn({5, 3}, 3);
  at::Tensor b3 = local_randn({2, 4, 5}, 4), c3 = local_randn({2, 5, 3}, 5);
  Tensor ra = from_local(m, a), rb = from_local(m, b), rc = from_local(m, c);
  Tensor rb3 = from_local(m, b3), rc3 = from_local(m, c3);
  require_same(ra + rb, a + b);
  require_same(ra - rb, a - b);
  require_same(ra * rb, a * b);
  require_same(ra / (rb.abs() + 1.0), a / (b.abs() + 1));
  require_same(ra + 2.5, a + 2.5);
  require_same(ra - 2.5, a - 2.5);
  require_same(3.0 * ra, a * 3);
  require_same(ra / 4.0, a / 4);
  require_same(-ra, -a);
  require_same(ra.add(rb, 0.5), a.add(b, 0.5));
  require_same(ra.pow(2), a.pow(2));
  require_same(ra.exp(), a.exp());
  require_same((ra.abs() + 1.0).log(), (a.abs() + 1).log());
  require_same(ra.abs().sqrt(), a.abs().sqrt());
  require_same(ra.matmul(rc), a.matmul(c));
  require_same(ra.mm(rc), a.mm(c));
  require_same(rb3.bmm(rc3), b3.bmm(c3));
  require_same(rb3.matmul(rc), b3.matmul(c));
}

TEST_CASE("activations, reductions and losses match libtorch", "[tensor][ops]") {
  DeviceMesh m = mesh();
  at::Tensor a = local_randn({6, 5}, 7);
  at::Tensor target = at::tensor({0, 4, 2, 1, 3, 0}, at::kLong);
  Tensor ra = from_local(m, a), rt = from_local(m, target);
  require_same(relu(ra), at::relu(a));
  require_same(gelu(ra), at::gelu(a));
  require_same(silu(ra), at::silu(a));
  require_same(cox::tanh(ra), at::tanh(a));
  require_same(sigmoid(ra), at::sigmoid(a));
  require_same(softmax(ra, 1), at::softmax(a, 1));
  require_same(log_softmax(ra, -1), at::log_softmax(a, -1));
  require_same(ra.sum(), a.sum());
  require_same(ra.sum({1}, true), a.sum({1}, true));
  require_same(ra.mean(), a.mean());
  require_same(ra.mean({0}), a.mean({0}));
  require_same(ra.max(), a.max());
  auto [values, indices] = ra.max(1);
  auto local_max = a.max(1);
  require_same(values, std::get<0>(local_max));
  require_same(indices, std::get<1>(local_max));
  require_same(ra.argmax(1), a.argmax(1));
  require_same(cross_entropy(ra, rt), at::cross_entropy_loss(a, target));
  require_same(nll_loss(log_softmax(ra, 1), rt), at::nll_loss(at::log_softmax(a, 1), target));
  require_same(mse_loss(ra, ra * 0.5), at::mse_loss(a, a * 0.5));
  require_same(dropout(ra, 0.5, false), a);
  at::Tensor lw = local_randn({5}, 8), lb = local_randn({5}, 9);
  require_same(layer_norm(ra, {5}, from_local(m, lw), from_local(m, lb)), at::layer_norm(a, {5}, lw, lb));
  at::Tensor w = local_randn({3, 5}, 10), bias = local_randn({3}, 11);
  require_same(linear(ra, from_local(m, w), from_local(m, bias)), at::linear(a, w, bias));
  require_same(linear(ra, from_local(m, w)), at::linear(a, w));
}

TEST_CASE("views, shapes, indexing and in-place ops match libtorch", "[tensor][ops]") {
  DeviceMesh m = mesh();
  at::Tensor a = local_randn({4, 6}, 12);
  Tensor ra = from_local(m, a);
  require_same(ra.view({6, 4}), a.view({6, 4}));
  require_same(ra.reshape({2, 12}), a.reshape({2, 12}));
  require_same(ra.transpose(0, 1), a.transpose(0, 1));
  require_same(ra.t().contiguous(), a.t().contiguous());
  require_same(ra.view({2, 2, 6}).permute({2, 0, 1}), a.view({2, 2, 6}).permute({2, 0, 1}));
  require_same(ra.narrow(1, 2, 3), a.narrow(1, 2, 3));
  require_same(ra.slice(1, 1, 6, 2), a.slice(1, 1, 6, 2));
  require_same(ra.select(0, 3), a.select(0, 3));
  require_same(ra.unsqueeze(0), a.unsqueeze(0));
  require_same(ra.unsqueeze(1).squeeze(1), a);
  require_same(cat({ra, ra * 2.0}, 1), at::cat({a, a * 2}, 1));
  require_same(stack({ra, ra}, 0), at::stack({a, a}, 0));
  at::Tensor idx = at::tensor({3, 0, 2}, at::kLong);
  require_same(ra.index_select(0, from_local(m, idx)), a.index_select(0, idx));
  require_same(embedding(ra, from_local(m, idx)), at::embedding(a, idx));
  require_same(ra.to(at::kDouble), a.to(at::kDouble));
  require_same(ra.clone(), a.clone());

  // In place, through views that alias their base as in libtorch.
  at::Tensor b = a.clone();
  Tensor rb = ra.clone();
  Tensor rview = rb.narrow(0, 1, 2);
  at::Tensor view = b.narrow(0, 1, 2);
  rview.fill_(7);
  view.fill_(7);
  require_same(rb, b);
  rb.add_(ra, 2.0).mul_(0.5);
  b.add_(a, 2.0).mul_(0.5);
  require_same(rb, b);
  rb.sub_(ra).add_(1.0).div_(4.0);
  b.sub_(a).add_(1.0).div_(4.0);
  require_same(rb, b);
  rview.zero_();
  view.zero_();
  require_same(rb, b);
  rb.copy_(ra * ra);
  b.copy_(a * a);
  require_same(rb, b);
  rb.mul_(ra);
  b.mul_(a);
  require_same(rb, b);
}

TEST_CASE("any aten op by name, with defaults from the schema", "[tensor][ops]") {
  DeviceMesh m = mesh();
  at::Tensor bias = local_randn({4, 3}, 13), x = local_randn({4, 5}, 14), w = local_randn({5, 3}, 15);
  auto outs = call_op("aten::addmm", "", {from_local(m, bias), from_local(m, x), from_local(m, w), 0.5, 2.0});
  REQUIRE(outs.size() == 1);
  require_same(outs[0], at::addmm(bias, x, w, 0.5, 2.0));
  auto parts = call_op("aten::split", "Tensor", {from_local(m, x), int64_t{2}});  // dim=0 by default
  REQUIRE(parts.size() == 2);
  require_same(parts[1], x.split(2)[1]);
  auto z = call_op(m, "aten::zeros", "", {std::vector<int64_t>{2, 3}, at::kInt});
  require_same(z[0], at::zeros({2, 3}, at::kInt));
  REQUIRE_THROWS_WITH(call_op(m, "aten::no_such_op", "", {}), Catch::Contains("unknown op 'aten::no_such_op'"));
}

TEST_CASE("creation, seeds, coordinates, scatter", "[tensor][creation]") {
  DeviceMesh m = mesh();
  require_same(zeros(m, {2, 3}), at::zeros({2, 3}));
  require_same(ones(m, {3}, {.dtype = at::kDouble}), at::ones({3}, at::kDouble));
  require_same(full(m, {2, 2}, 1.5), at::full({2, 2}, 1.5));
  require_same(arange(m, 7), at::arange(7));
  Tensor e = empty(m, {5, 2});
  REQUIRE(e.sizes() == std::vector<int64_t>{5, 2});

  // The same seed gives the same values on every worker...
  m.manual_seed(42);
  auto same = randn(m, {8}).fetch_all();
  for (auto& s : same) REQUIRE(at::equal(s, same[0]));
  if (controller().device(0) == "cpu") {
    // The values a local CPU generator makes (a GPU's generator differs).
    at::manual_seed(42);
    REQUIRE(at::equal(same[0], at::randn({8})));
  }
  // ...and per rank, different ones.
  m.manual_seed(42, true);
  auto diff = rand(m, {8}).fetch_all();
  REQUIRE_FALSE(at::equal(diff[0], diff[1]));
  REQUIRE_FALSE(at::equal(diff[1], diff[3]));

  auto dp = coordinate(m, "dp").fetch_all();
  auto tp = coordinate(m, "tp").fetch_all();
  std::vector<int64_t> dps, tps;
  for (auto& t : dp) dps.push_back(t.item<int64_t>());
  for (auto& t : tp) tps.push_back(t.item<int64_t>());
  REQUIRE(dps == std::vector<int64_t>{0, 0, 1, 1});
  REQUIRE(tps == std::vector<int64_t>{0, 1, 0, 1});

  at::Tensor big = at::arange(12, at::kFloat).view({4, 3});
  Tensor sc = scatter(m, big, 0, "tp");
  REQUIRE(sc.sizes() == std::vector<int64_t>{2, 3});
  REQUIRE(at::equal(sc.fetch({{"dp", 1}, {"tp", 1}}).get(), big.narrow(0, 2, 2)));
  REQUIRE(at::equal(sc.fetch({{"dp", 1}, {"tp", 0}}).get(), big.narrow(0, 0, 2)));
  REQUIRE_THROWS_WITH(scatter(m, at::zeros({3}), 0, "tp"), Catch::Contains("size 3 of tensor dim 0 is not divisible"));
  REQUIRE(full(m, {1}, 3.0).item<float>() == 3.0f);
}

TEST_CASE("bad arguments are InvalidArgument at the call site, and nothing is sent", "[tensor][errors]") {
  DeviceMesh m = mesh();
  Tensor a = zeros(m, {4, 5});
  m.sync();
  const int64_t live = m.live_tensors({{"dp", 0}, {"tp", 0}});
  REQUIRE_THROWS_WITH(a.matmul(a), Catch::Contains("aten::matmul") && Catch::Contains("Float[4, 5], Float[4, 5]") &&
                                       Catch::Contains("cannot be multiplied"));
  REQUIRE_THROWS_AS(a.view({7}), InvalidArgument);
  REQUIRE_THROWS_AS(a.narrow(0, 3, 5), InvalidArgument);
  REQUIRE_THROWS_AS(a.transpose(0, 5), InvalidArgument);
  REQUIRE_THROWS_AS(cat({a, zeros(m, {4, 5}, {.dtype = at::kInt}).view({5, 4})}, 1), InvalidArgument);
  REQUIRE_THROWS_WITH(Tensor().sum(), Catch::Contains("undefined"));
  m.sync();
  // A rejected op that had been sent would have left its outputs on the
  // workers with no handle to free them.
  REQUIRE(m.live_tensors({{"dp", 0}, {"tp", 0}}) == live);
}

TEST_CASE("a failing op makes error values, not dead workers", "[tensor][errors]") {
  DeviceMesh m = mesh();
  Tensor a = from_local(m, at::ones({4, 5}));
  // Metadata is fine, execution fails (negative probabilities).
  Tensor probs = from_local(m, at::tensor({0.5, -1.0, 0.5}));
  Tensor sample = call_op("aten::multinomial", "", {probs, int64_t{1}})[0];
  Tensor chained = (sample.to(at::kFloat) + 1.0).sum();
  try {
    chained.fetch({1, 1}).get();
    FAIL("fetch should have thrown");
  } catch (const RemoteError& e) {
    REQUIRE(e.rank() == 3);
    REQUIRE(e.op() == "aten::multinomial");
    REQUIRE_THAT(e.message(), Catch::Contains("Double[3]"));
  }
  // An out-of-range index: the op and everything after it.
  Tensor bad = a.index_select(0, from_local(m, at::tensor({9}, at::kLong)));
  Tensor after = relu(bad * 2.0);
  REQUIRE_THROWS_WITH(after.fetch({0, 0}).get(), Catch::Contains("aten::index_select failed on worker 0") &&
                                                     Catch::Contains("index out of range"));
  // Out of memory: 4 EiB on every worker, more than any address space holds
  // (so the allocation fails whatever the overcommit policy).
  Tensor huge = zeros(m, {int64_t{1} << 60});
  REQUIRE(huge.sizes() == std::vector<int64_t>{int64_t{1} << 60});  // the shape itself is fine
  REQUIRE_THROWS_AS((huge + 1.0).sum().fetch({0, 1}).get(), RemoteError);
  // Unrelated work on the same mesh carries on.
  require_same(a * 3.0, at::ones({4, 5}) * 3);
  m.sync();
  REQUIRE(controller().lost_workers().empty());
}

namespace {
// An index tensor that is out of range for a {4, 5} input on the workers
// where `where` (a 0-d int64 tensor per worker) is non-zero.
Tensor bad_index_where(const Tensor& where) { return call_op("aten::mul", "Scalar", {where, int64_t{100}})[0].view({1}); }
}  // namespace

TEST_CASE("an error raised by a fetch is not raised again by sync", "[tensor][errors][once]") {
  DeviceMesh m = mesh();
  m.sync();
  Tensor a = from_local(m, at::ones({4, 5}));
  // Fails on all four workers: four reports of one failure.
  Tensor bad = a.index_select(0, from_local(m, at::tensor({9}, at::kLong)));
  Tensor after = relu(bad * 2.0).sum();
  REQUIRE_THROWS_WITH(after.fetch({1, 0}).get(30000ms), Catch::Contains("aten::index_select failed on worker 2"));
  m.sync(30000ms);             // delivered: every rank's report of it
  controller().sync(30000ms);  // the same for the whole controller
  // Fetching it again still throws (the value is an error value for good).
  REQUIRE_THROWS_AS(bad.fetch({0, 1}).get(30000ms), RemoteError);
  m.sync(30000ms);
}

TEST_CASE("an error nobody fetched is raised by the next sync, once", "[tensor][errors][once]") {
  DeviceMesh m = mesh();
  m.sync();
  Tensor a = from_local(m, at::ones({4, 5}));
  Tensor bad = a.index_select(0, from_local(m, at::tensor({9}, at::kLong)));
  try {
    m.sync(30000ms);
    FAIL("sync should have thrown");
  } catch (const RemoteError& e) {
    CHECK(e.op() == "aten::index_select");
    CHECK_THAT(e.message(), Catch::Contains("index out of range"));
  }
  m.sync(30000ms);  // once
  REQUIRE_THROWS_AS(bad.fetch({0, 0}).get(30000ms), RemoteError);
  m.sync(30000ms);
}

TEST_CASE("a fetch delivers its own op's error; a different failing op still surfaces at sync",
          "[tensor][errors][once]") {
  DeviceMesh m = mesh();
  m.sync();
  Tensor a = from_local(m, at::ones({4, 5}));
  // Two failing ops: an index out of range only on the workers where dp == 1
  // (two reports), then negative probabilities everywhere (four).
  Tensor first = a.index_select(0, bad_index_where(coordinate(m, "dp")));
  Tensor probs = from_local(m, at::tensor({0.5, -1.0, 0.5}));
  Tensor second = call_op("aten::multinomial", "", {probs, int64_t{1}})[0];
  // One shard of the first, from one of its two failing workers.
  REQUIRE_THROWS_WITH(first.fetch({{"dp", 1}, {"tp", 1}}).get(30000ms), Catch::Contains("aten::index_select"));
  try {
    m.sync(30000ms);
    FAIL("sync should have raised the second failure");
  } catch (const RemoteError& e) {
    CHECK(e.op() == "aten::multinomial");
  }
  m.sync(30000ms);
  // Where dp == 0 the first op succeeded.
  REQUIRE(first.fetch({{"dp", 0}, {"tp", 1}}).get(30000ms).sizes() == c10::IntArrayRef({1, 5}));
  m.sync(30000ms);
}

TEST_CASE("an op's error raised when its metadata was asked for is not raised again by sync",
          "[tensor][errors][once]") {
  // multinomial has no meta kernel: the reporting worker's answer is where
  // the error shows first.
  DeviceMesh m = mesh();
  m.sync();
  Tensor probs = from_local(m, at::tensor({0.5, -1.0, 0.5}));
  Tensor sample = call_op("aten::multinomial", "", {probs, int64_t{2}})[0];
  REQUIRE_THROWS_AS(sample.sizes(), RemoteError);
  m.sync(30000ms);
}

TEST_CASE("a failing in-place op, which has no error value to fetch, is raised by sync", "[tensor][errors][once]") {
  DeviceMesh m = mesh();
  m.sync();
  Tensor a = from_local(m, at::ones({4, 5}));
  call_op("aten::index_fill_", "int_Scalar", {a, int64_t{0}, from_local(m, at::tensor({9}, at::kLong)), 2.0});
  REQUIRE_THROWS_WITH(m.sync(30000ms), Catch::Contains("index_fill_"));
  m.sync(30000ms);
  // The tensor is unchanged, and usable.
  require_same(a * 1.0, at::ones({4, 5}));
}

TEST_CASE("dropping the last handle frees the tensor on the workers", "[tensor][memory]") {
  DeviceMesh m = mesh();
  m.sync();
  const int64_t before = m.live_tensors({{"dp", 1}, {"tp", 0}});
  {
    std::vector<Tensor> keep;
    Tensor x = ones(m, {8});
    for (int i = 0; i < 300; ++i) keep.push_back(x + static_cast<double>(i));
    Tensor copy = keep[0];  // copies share the handle
    keep.clear();
    REQUIRE(m.live_tensors({{"dp", 1}, {"tp", 0}}) >= before + 2);
    REQUIRE(copy.sum().item<float>() == 8.0f);
  }
  REQUIRE(m.live_tensors({{"dp", 1}, {"tp", 0}}) == before);
}

TEST_CASE("autograd on the workers equals local autograd", "[tensor][autograd]") {
  DeviceMesh m = mesh();
  at::Tensor w1 = local_randn({5, 8}, 20), w2 = local_randn({8, 3}, 21), x = local_randn({6, 5}, 22);
  at::Tensor target = at::tensor({0, 2, 1, 1, 0, 2}, at::kLong);
  Tensor rw1 = from_local(m, w1, true), rw2 = from_local(m, w2, true);
  REQUIRE(rw1.requires_grad());
  Tensor rx = from_local(m, x), rt = from_local(m, target);
  at::Tensor lw1 = w1.clone().requires_grad_(true), lw2 = w2.clone().requires_grad_(true);
  for (int step = 0; step < 3; ++step) {
    Tensor loss = cross_entropy(gelu(rx.matmul(rw1)).matmul(rw2), rt);
    REQUIRE(loss.requires_grad());
    at::Tensor lloss = at::cross_entropy_loss(at::gelu(x.matmul(lw1)).matmul(lw2), target);
    loss.backward();
    torch::autograd::backward({lloss});
    require_same(loss.detach(), lloss.detach());
    require_same(rw1.grad(), lw1.grad());
    require_same(rw2.grad(), lw2.grad());
    {
      NoGradGuard no_grad(m);
      rw1.sub_(rw1.grad(), 0.1);
      rw2.sub_(rw2.grad(), 0.1);
      rw1.grad().zero_();
      rw2.grad().zero_();
      Tensor not_recorded = rw1 * 2.0;
      REQUIRE_FALSE(not_recorded.requires_grad());
    }
    {
      c10::NoGradGuard no_grad;
      lw1.sub_(lw1.grad(), 0.1);
      lw2.sub_(lw2.grad(), 0.1);
      lw1.grad().zero_();
      lw2.grad().zero_();
    }
  }
  require_same(rw1.detach(), lw1.detach());
  require_same(rw2.detach(), lw2.detach());
  REQUIRE_THROWS_WITH(from_local(m, x).grad().fetch({0, 0}).get(), Catch::Contains("no gradient"));
}

TEST_CASE("backward from a given gradient, as a pipeline stage does", "[tensor][autograd]") {
  DeviceMesh m = mesh();
  at::Tensor x = local_randn({4, 5}, 40), w = local_randn({5, 3}, 41), g = local_randn({4, 3}, 42);
  Tensor rw = from_local(m, w, /*requires_grad=*/true);
  Tensor y = from_local(m, x).matmul(rw);
  y.backward(from_local(m, g));
  require_same(rw.grad(), x.t().matmul(g));
  REQUIRE_THROWS_WITH(y.backward(), Catch::Contains("12 elements needs a gradient"));
  REQUIRE_THROWS_WITH(y.backward(from_local(m, g.t())), Catch::Contains("sizes [3, 4]"));
  REQUIRE_THROWS_WITH(from_local(m, x).backward(from_local(m, x)), Catch::Contains("does not require grad"));
}

TEST_CASE("fused optimizer ops match their formulas, and check their lists", "[tensor][optim]") {
  DeviceMesh m = mesh();
  at::Tensor p0 = local_randn({5, 3}, 50), p1 = local_randn({7}, 51), g0 = local_randn({5, 3}, 52),
             g1 = local_randn({7}, 53);
  std::vector<Tensor> params{from_local(m, p0), from_local(m, p1)}, grads{from_local(m, g0), from_local(m, g1)};
  std::vector<Tensor> bufs{zeros(m, {5, 3}), zeros(m, {7})};
  SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  fused_sgd_momentum_(params, grads, bufs, o, /*first=*/true);
  fused_sgd_momentum_(params, grads, bufs, o, /*first=*/false);
  // By hand: two steps of PyTorch's SGD with momentum.
  std::vector<at::Tensor> lp{p0.clone(), p1.clone()}, lg{g0, g1}, lb(2);
  for (int step = 0; step < 2; ++step) {
    for (size_t i = 0; i < 2; ++i) {
      const at::Tensor d = lg[i] + 0.01 * lp[i];
      lb[i] = step == 0 ? d : 0.9 * lb[i] + d;
      lp[i] = lp[i] - 0.1 * lb[i];
    }
  }
  require_same(params[0], lp[0]);
  require_same(params[1], lp[1]);
  require_same(bufs[1], lb[1]);

  AdamWOptions a;
  REQUIRE_THROWS_WITH(fused_adamw_(params, {grads[0]}, bufs, bufs, a, 1), Catch::Contains("2 params but 1 grads"));
  REQUIRE_THROWS_WITH(fused_adamw_(params, {grads[1], grads[0]}, bufs, bufs, a, 1),
                      Catch::Contains("grads[0] has sizes [7]"));
  REQUIRE_THROWS_WITH(fused_adamw_({params[0].to(at::kDouble)}, {grads[0]}, {bufs[0]}, {bufs[0]}, a, 1),
                      Catch::Contains("float32"));
  REQUIRE_THROWS_WITH(fused_adamw_(params, grads, bufs, bufs, a, 0), Catch::Contains("step counts from 1"));
}

TEST_CASE("gradient buckets: flatten and unflatten_ equal cat and scaled copies, and check their tensors",
          "[tensor][buckets]") {
  DeviceMesh m = mesh();
  for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16, at::kLong}) {
    INFO("dtype " << dt);
    const std::vector<at::Tensor> local{(local_randn({5, 3}, 60) * 4).to(dt), (local_randn({7}, 61) * 4).to(dt),
                                        (local_randn({1}, 62) * 4).to(dt), (local_randn({2, 2, 2}, 63) * 4).to(dt)};
    std::vector<Tensor> ts;
    for (const auto& t : local) ts.push_back(from_local(m, t));
    Tensor flat = flatten(ts);
    std::vector<at::Tensor> views;
    for (const auto& t : local) views.push_back(t.reshape({-1}));
    const at::Tensor cat = at::cat(views);
    require_equal(flat, cat);
    // Back into the tensors: a plain copy of every dtype, scaled where it can be.
    Tensor doubled = flat + flat;
    unflatten_(doubled, ts);
    for (size_t i = 0; i < ts.size(); ++i) require_equal(ts[i], local[i] * 2);
    if (dt != at::kLong) {
      unflatten_(doubled, ts, 0.25);
      // Powers of two: exact in every dtype.
      for (size_t i = 0; i < ts.size(); ++i) require_equal(ts[i], (local[i].to(at::kFloat) * 0.5).to(dt));
      unflatten_(doubled, ts, 0.3);
      for (size_t i = 0; i < ts.size(); ++i) {
        // float32 arithmetic, one rounding to the dtype.
        require_equal(ts[i], ((local[i] * 2).to(at::kFloat) * 0.3f).to(dt));
      }
    } else {
      REQUIRE_THROWS_WITH(unflatten_(doubled, ts, 0.5), Catch::Contains("scaling needs float32"));
    }
  }
  TensorOptions f64;
  f64.dtype = at::kDouble;
  Tensor a = zeros(m, {3}), b = zeros(m, {4}, f64);
  REQUIRE_THROWS_WITH(flatten({a, b}), Catch::Contains("tensors[1] is Double but tensors[0] is Float"));
  REQUIRE_THROWS_WITH(flatten({}), Catch::Contains("flatten: no tensors"));
  REQUIRE_THROWS_WITH(unflatten_(zeros(m, {5}), {a}), Catch::Contains("flat has sizes [5] but the tensors hold 3"));
}

TEST_CASE("remote functions from a plugin library", "[tensor][remote]") {
  DeviceMesh m = mesh();
  m.load_library(COX_TEST_PLUGIN);
  at::Tensor a = local_randn({3, 4}, 30), b = local_randn({3, 4}, 31);
  auto outs = call_remote(m, "scaled_add", {from_local(m, a), from_local(m, b)}, {2.0});
  REQUIRE(outs.size() == 2);
  require_same(outs[0], a * 2 + b);
  require_same(outs[1], (a * 2 + b).sum());
  // A whole optimizer step in one message, updating parameters in place.
  Tensor p = from_local(m, a), g = from_local(m, b);
  REQUIRE(call_remote(m, "sgd_step", {p, g}, {0.5}).empty());
  require_same(p, a - b * 0.5);
  // The second call with a known signature does not wait for a worker.
  auto again = call_remote(m, "scaled_add", {from_local(m, b), from_local(m, a)}, {2.0});
  require_same(again[0], b * 2 + a);
  REQUIRE(again[1].sizes().empty());
  REQUIRE_THROWS_WITH(call_remote(m, "scaled_add", {p}, {}), Catch::Contains("takes 2 tensors"));
  REQUIRE_THROWS_WITH(call_remote(m, "nope", {p}, {}), Catch::Contains("no remote function of that name"));
  REQUIRE_THROWS_AS(m.load_library("/nonexistent/libplugin.so"), RemoteError);
  // A known signature whose input is an error value (of known metadata: the
  // gradient of a tensor that has none): the outputs become error values
  // too, surfaced at fetch.
  Tensor no_grad_input = from_local(m, a).grad();
  auto poisoned = call_remote(m, "scaled_add", {no_grad_input, from_local(m, b)}, {2.0});
  REQUIRE(poisoned.size() == 2);
  REQUIRE_THROWS_WITH(poisoned[1].fetch({1, 0}).get(), Catch::Contains("no gradient"));
  // An input computed by a failed op: the call fails at once where the
  // input's metadata never came (no meta kernel for the op), else at fetch.
  Tensor sample = call_op("aten::multinomial", "", {from_local(m, at::tensor({0.5, -1.0})), int64_t{1}})[0];
  auto call_and_fetch = [&] {
    call_remote(m, "scaled_add", {from_local(m, a) + sample.to(at::kFloat), p}, {2.0})[0].fetch({0, 0}).get();
  };
  REQUIRE_THROWS_WITH(call_and_fetch(), Catch::Contains("aten::multinomial"));
}

TEST_CASE("sub-meshes run ops on their members only", "[tensor][mesh]") {
  DeviceMesh m = mesh();
  DeviceMesh row = m.slice("dp", 0);
  REQUIRE(row.ranks() == std::vector<int64_t>{0, 1});
  m.sync();
  const int64_t other = m.live_tensors({{"dp", 1}, {"tp", 1}});
  Tensor t = ones(row, {3}) * 2.0;
  REQUIRE(t.fetch({{"tp", 1}}).get().sum().item<float>() == 6.0f);
  m.sync();
  REQUIRE(m.live_tensors({{"dp", 1}, {"tp", 1}}) == other);
  REQUIRE(m.live_tensors({{"dp", 0}, {"tp", 1}}) >= 1);
  Tensor elsewhere = ones(m.slice("dp", 1), {3});
  REQUIRE_THROWS_WITH(t + elsewhere, Catch::Contains("used in an op on mesh"));
  REQUIRE_THROWS_WITH(controller().mesh({{"x", 3}}), Catch::Contains("has 3 ranks but the controller has 4 workers"));
}
