// CUDA workers on a real GPU: placement, ops, fetch, dtypes, errors,
// autograd, Coxswain's own ops against CPU workers, every collective and
// to_mesh over several workers sharing one GPU (NCCL, a host id per rank),
// the ordering between the compute and communication streams, and a worker
// lost in the middle of a collective. Without a CUDA libtorch and a visible
// GPU the binary exits 77, which CTest reports as skipped.
#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <cox/bucket.hpp>
#include <cox/collectives.hpp>
#include <cox/optim.hpp>
#include <cox/tensor.hpp>

#include <catch2/catch.hpp>

#include <signal.h>

#include <cstdio>
#include <cstdlib>

using namespace cox;
using namespace std::chrono_literals;

namespace {

struct SkipWithoutGpu {
  SkipWithoutGpu() {
    if (!at::hasCUDA() || at::detail::getCUDAHooks().getNumGPUs() < 1) {
      std::printf("skipped: no CUDA device visible (or this libtorch has no CUDA)\n");
      std::exit(77);
    }
  }
} skip_without_gpu;

ControllerOptions options(int workers, const std::string& device = "cuda") {
  ControllerOptions o;
  o.workers = workers;
  o.device = device;
  o.worker_path = COX_TEST_WORKER;
  o.collective_timeout = 60s;
  if (device == "cuda") o.gpus = {0};
  return o;
}

// One CUDA worker for the single-worker cases.
Controller& one() {
  static Controller c = Controller::local(options(1));
  return c;
}

void require_close(const at::Tensor& got, const at::Tensor& want, double rtol = 1e-4, double atol = 1e-5) {
  INFO("got " << got.sizes() << " " << got.scalar_type() << ", want " << want.sizes() << " " << want.scalar_type());
  REQUIRE(got.sizes() == want.sizes());
  REQUIRE(got.scalar_type() == want.scalar_type());
  const at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  INFO("max abs difference " << (g - w).abs().max().item<double>());
  REQUIRE(at::allclose(g, w, rtol, atol));
}

}  // namespace

TEST_CASE("by default a local controller starts one CUDA worker per visible GPU", "[gpu]") {
  ControllerOptions o;
  o.worker_path = COX_TEST_WORKER;
  Controller c = Controller::local(o);
  const int gpus = at::detail::getCUDAHooks().getNumGPUs();
  REQUIRE(c.size() == gpus);
  for (int r = 0; r < c.size(); ++r) REQUIRE(c.device(r) == "cuda:" + std::to_string(r));
  // "cpu" still gives CPU workers.
  Controller cpu = Controller::local(options(1, "cpu"));
  REQUIRE(cpu.device(0) == "cpu");
  // A GPU that is not there is an error at the call site.
  ControllerOptions bad = options(1);
  bad.gpus = {gpus};
  REQUIRE_THROWS_AS(Controller::local(bad), InvalidArgument);
}

TEST_CASE("ops and fetch on a CUDA worker match local libtorch, in float32, float16 and bfloat16", "[gpu]") {
  Controller& c = one();
  REQUIRE(c.device(0) == "cuda:0");
  DeviceMesh m = c.mesh({{"x", 1}});
  at::manual_seed(1);
  const at::Tensor x = at::randn({64, 32}), w = at::randn({32, 16}), b = at::randn({16});
  Tensor rx = from_local(m, x), rw = from_local(m, w), rb = from_local(m, b);
  const at::Tensor want = at::relu(x.matmul(w) + b).sum({1});
  require_close((relu(rx.matmul(rw) + rb)).sum({1}).fetch({0}).get(30s), want);

  for (at::ScalarType dt : {at::kHalf, at::kBFloat16}) {
    INFO("dtype " << dt);
    const Tensor y = relu(rx.to(dt).matmul(rw.to(dt)) + rb.to(dt));
    REQUIRE(y.dtype() == dt);
    const at::Tensor got = y.fetch({0}).get(30s);
    REQUIRE(got.scalar_type() == dt);
    // Rounded to 8 (bfloat16) or 11 (float16) bits on the way: loose.
    require_close(got.to(at::kFloat), at::relu(x.matmul(w) + b), 3e-2, 0.15);
  }

  // Made on the worker: its own generator, seeded.
  m.manual_seed(7);
  const at::Tensor r1 = randn(m, {1000}).fetch({0}).get(30s);
  m.manual_seed(7);
  const at::Tensor r2 = randn(m, {1000}).fetch({0}).get(30s);
  REQUIRE(at::equal(r1, r2));
  REQUIRE(std::abs(r1.mean().item<double>()) < 0.2);

  // Many fetches in flight at once all come back, each with its own value.
  std::vector<TensorFuture> futures;
  for (int i = 0; i < 50; ++i) futures.push_back((rx * static_cast<double>(i)).sum().fetch({0}));
  for (int i = 0; i < 50; ++i) {
    REQUIRE(futures[static_cast<size_t>(i)].get(30s).item<double>() == Approx(x.sum().item<double>() * i).epsilon(1e-4));
  }
  c.sync(30s);
}

TEST_CASE("large tensors stream to and from a CUDA worker in chunks within a 64 KiB frame limit", "[gpu]") {
  auto o = options(2);
  o.max_frame_bytes = 65536;
  Controller c = Controller::local(o);
  DeviceMesh m = c.mesh({{"x", 2}});
  const at::Tensor v = at::randn({int64_t{48} << 20});  // 192 MiB
  Tensor t = from_local(m, v);
  // The fetch's copy to the host runs on the worker's GPU thread, which
  // streams it back while the worker goes on.
  std::vector<TensorFuture> futures;
  for (int i = 0; i < 3; ++i) futures.push_back((t * 2.0).fetch({i % 2}));
  for (auto& f : futures) REQUIRE(at::equal(f.get(120s), v * 2.0));
  REQUIRE(at::equal(t.to_mesh(m.slice("x", 1, 2)).fetch({0}).get(120s), v));
  REQUIRE(c.lost_workers().empty());
}

TEST_CASE("errors on a CUDA worker reach the controller with libtorch's and CUDA's message", "[gpu]") {
  Controller& c = one();
  DeviceMesh m = c.mesh({{"x", 1}});
  // Found only on the worker: not positive-definite.
  Tensor a = from_local(m, -at::eye(4));
  Tensor l = call_op("aten::linalg_cholesky", "", {a}).at(0);
  try {
    l.fetch({0}).get(30s);
    FAIL("fetch of a failed op returned");
  } catch (const RemoteError& e) {
    INFO(e.what());
    REQUIRE(std::string(e.what()).find("cholesky") != std::string::npos);
  }
  // The allocator's own error: more memory than the GPU has.
  Tensor huge = empty(m, {int64_t{1} << 42});
  try {
    huge.fetch({0}).get(30s);
    FAIL("fetch of an impossible allocation returned");
  } catch (const RemoteError& e) {
    INFO(e.what());
    REQUIRE(std::string(e.what()).find("out of memory") != std::string::npos);
  }
  // The worker goes on.
  REQUIRE((from_local(m, at::ones({3})) * 2.0).sum().item<double>() == 6.0);
}

TEST_CASE("autograd runs on a CUDA worker", "[gpu]") {
  DeviceMesh m = one().mesh({{"x", 1}});
  const at::Tensor x0 = at::randn({8, 4});
  Tensor x = from_local(m, x0, /*requires_grad=*/true);
  Tensor loss = (x * x).sum() + x.sum();
  loss.backward();
  require_close(x.grad().fetch({0}).get(30s), 2 * x0 + 1);
}

TEST_CASE("the fused optimizers and the buckets give on a GPU what they give on a CPU worker", "[gpu]") {
  Controller cpu = Controller::local(options(1, "cpu"));
  DeviceMesh g = one().mesh({{"x", 1}}), c = cpu.mesh({{"x", 1}});
  at::manual_seed(3);
  std::vector<at::Tensor> p, grad;
  for (int64_t n : {1, 7, 256, 1000, 4099, 65537}) {
    p.push_back(at::randn({n}));
    grad.push_back(at::randn({n}));
  }
  auto on = [&](const DeviceMesh& m, const std::vector<at::Tensor>& ts) {
    std::vector<Tensor> out;
    for (const auto& t : ts) out.push_back(from_local(m, t));
    return out;
  };
  auto zeros_like = [&](const DeviceMesh& m) {
    std::vector<Tensor> out;
    for (const auto& t : p) out.push_back(zeros(m, t.sizes().vec()));
    return out;
  };
  struct Side {
    std::vector<Tensor> p, g, m, v;
  };
  Side sg{on(g, p), on(g, grad), zeros_like(g), zeros_like(g)};
  Side sc{on(c, p), on(c, grad), zeros_like(c), zeros_like(c)};
  AdamWOptions o;
  o.lr = 1e-2;
  for (int step = 1; step <= 3; ++step) {
    for (Side* s : {&sg, &sc}) fused_adamw_(s->p, s->g, s->m, s->v, o, step);
  }
  SgdOptions so;
  so.nesterov = true;
  so.weight_decay = 1e-3;
  for (int step = 0; step < 2; ++step) {
    for (Side* s : {&sg, &sc}) fused_sgd_momentum_(s->p, s->g, s->m, so, step == 0);
  }
  for (size_t i = 0; i < p.size(); ++i) {
    require_close(sg.p[i].fetch({0}).get(30s), sc.p[i].fetch({0}).get(30s), 1e-5, 1e-6);
    require_close(sg.v[i].fetch({0}).get(30s), sc.v[i].fetch({0}).get(30s), 1e-5, 1e-7);
  }

  for (at::ScalarType dt : {at::kFloat, at::kHalf, at::kBFloat16}) {
    INFO("dtype " << dt);
    std::vector<at::Tensor> local;
    std::vector<Tensor> rg, rc;
    for (const auto& t : grad) {
      local.push_back(t.to(dt));
      rg.push_back(from_local(g, local.back()));
      rc.push_back(from_local(c, local.back()));
    }
    const at::Tensor cat = at::cat(local);
    REQUIRE(at::equal(flatten(rg).fetch({0}).get(30s), cat));
    REQUIRE(at::equal(flatten(rc).fetch({0}).get(30s), cat));
    Tensor flat_g = flatten(rg) * 2.0, flat_c = flatten(rc) * 2.0;
    unflatten_(flat_g, rg, 0.25);
    unflatten_(flat_c, rc, 0.25);
    for (size_t i = 0; i < rg.size(); ++i) {
      const at::Tensor a = rg[i].fetch({0}).get(30s), b = rc[i].fetch({0}).get(30s);
      // The same rounding on both sides: equal, not just close.
      REQUIRE(at::equal(a, b));
      require_close(a.to(at::kFloat), local[i].to(at::kFloat) * 0.5, 1e-2, 1e-2);
    }
  }
}

TEST_CASE("collectives over four workers sharing one GPU (NCCL)", "[gpu][collectives]") {
  Controller c = Controller::local(options(4));
  for (int r = 0; r < 4; ++r) REQUIRE(c.device(r) == "cuda:0");
  DeviceMesh m = c.mesh({{"dp", 2}, {"tp", 2}});
  // Worker (d, t) holds base + 100 d + 10 t.
  const at::Tensor base = at::arange(8, at::kFloat).reshape({2, 4});
  auto value = [&](int64_t d, int64_t t) { return base + 100.0 * d + 10.0 * t; };
  Tensor x = from_local(m, base) + coordinate(m, "dp").to(at::kFloat) * 100.0 +
             coordinate(m, "tp").to(at::kFloat) * 10.0;

  for (at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kLong}) {
    INFO("dtype " << dt);
    Tensor xd = x.to(dt);
    auto shard = [&](const Tensor& t, int64_t d, int64_t tp) { return t.fetch({d, tp}).get(60s); };
    for (int64_t d = 0; d < 2; ++d) {
      for (int64_t t = 0; t < 2; ++t) {
        INFO("worker " << d << "," << t);
        const at::Tensor over_tp = (value(d, 0) + value(d, 1)).to(dt);
        REQUIRE(at::equal(shard(all_reduce(xd, {"tp"}), d, t), over_tp));
        REQUIRE(at::equal(shard(all_reduce(xd, {}, Reduce::Max), d, t), value(1, 1).to(dt)));
        REQUIRE(at::equal(shard(reduce_scatter(xd, {"tp"}, Reduce::Sum, 1), d, t), over_tp.chunk(2, 1)[t]));
        REQUIRE(at::equal(shard(all_gather(xd, {"dp"}, 0), d, t), at::cat({value(0, t), value(1, t)}, 0).to(dt)));
        const at::Tensor a2a = shard(all_to_all(xd, {"tp"}, 1, 1), d, t);
        REQUIRE(at::equal(a2a, at::cat({value(d, 0).chunk(2, 1)[t], value(d, 1).chunk(2, 1)[t]}, 1).to(dt)));
        REQUIRE(at::equal(shard(broadcast(xd, {"dp"}, 1), d, t), value(1, t).to(dt)));
      }
    }
    Tensor y = xd.clone();
    all_reduce_(y, {"dp"});
    for (int64_t t = 0; t < 2; ++t) REQUIRE(at::equal(shard(y, 1, t), (value(0, t) + value(1, t)).to(dt)));
  }
  barrier(m);

  // to_mesh between the two halves of the mesh, both ways, and a swap.
  DeviceMesh half0 = m.slice("dp", 0), half1 = m.slice("dp", 1);
  Tensor on0 = from_local(half0, base) + coordinate(half0, "tp").to(at::kFloat);
  Tensor moved = on0.to_mesh(half1);
  for (int64_t t = 0; t < 2; ++t) REQUIRE(at::equal(moved.fetch({t}).get(60s), base + static_cast<double>(t)));
  Tensor back = (moved * 2.0).to(at::kBFloat16).to_mesh(half0);
  for (int64_t t = 0; t < 2; ++t) {
    REQUIRE(at::equal(back.fetch({t}).get(60s), ((base + static_cast<double>(t)) * 2).to(at::kBFloat16)));
  }
  Tensor swapped = send_recv(x, m, {1, 0, 3, 2});
  REQUIRE(at::equal(swapped.fetch({0, 0}).get(60s), value(0, 1)));
  c.sync(60s);
}

TEST_CASE("the streams are ordered: a collective waits for its input, its readers wait for it", "[gpu][collectives]") {
  Controller c = Controller::local(options(2));
  DeviceMesh m = c.mesh({{"dp", 2}});
  // A long chain of matmuls makes x late on the compute stream; were the
  // communication stream not to wait, the all_reduce would read x early.
  const int64_t n = 2048;
  m.manual_seed(11, /*per_rank=*/true);
  Tensor w = randn(m, {n, n}) * (1.0 / std::sqrt(static_cast<double>(n)));
  Tensor x = randn(m, {n, n});
  for (int i = 0; i < 20; ++i) x = x.matmul(w);
  Tensor sum = all_reduce(x, {"dp"});
  // Read at once by the compute stream: were it not to wait, it would read
  // the output before the collective wrote it.
  Tensor twice = sum * 2.0;
  // In place: the reader right after must see the reduced values.
  Tensor y = x.clone();
  all_reduce_(y, {"dp"});
  Tensor y1 = y + 0.0;
  const at::Tensor x0 = x.fetch({0}).get(120s), x1 = x.fetch({1}).get(120s);
  const at::Tensor want = x0 + x1;
  for (int64_t r = 0; r < 2; ++r) {
    require_close(twice.fetch({r}).get(120s), 2 * want, 1e-5, 1e-4);
    require_close(y1.fetch({r}).get(120s), want, 1e-5, 1e-4);
  }
}

TEST_CASE("a CUDA worker killed before a collective ends it in WorkerLost, not a hang", "[gpu][collectives]") {
  ControllerOptions o = options(3);
  o.heartbeat_interval = 200ms;
  o.heartbeat_timeout = 2000ms;
  o.collective_timeout = 30s;
  Controller c = Controller::local(o);
  DeviceMesh m = c.mesh({{"dp", 3}});
  Tensor x = ones(m, {1024});
  REQUIRE(all_reduce(x).fetch({0}).get(60s)[0].item<double>() == 3.0);
  ::kill(static_cast<pid_t>(c.worker_pid(2)), SIGKILL);
  // At the call site (the loss already noticed) or at the fetch.
  REQUIRE_THROWS_AS([&] { all_reduce(x * 2.0).fetch({0}).get(60s); }(), WorkerLost);
}
