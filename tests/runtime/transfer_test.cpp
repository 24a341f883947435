// Transfers of any size: every kind of transfer with a small frame limit,
// bounded controller memory while moving much more than it, replies that
// nobody reads released, and (where memory allows) one shard over 4 GiB.
#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include "runtime/test_util.hpp"

#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

using namespace cox;
using namespace cox::test;

namespace {

// n bytes (a multiple of 8) that differ from word to word, made cheaply.
at::Tensor pattern(int64_t n, int64_t seed) {
  at::Tensor t = at::empty({n}, at::kByte);
  t.view(at::kLong).copy_(at::arange(seed, seed + n / 8, at::kLong));
  return t;
}

// From /proc: kB of this process's resident set (VmRSS) or its peak (VmHWM).
size_t proc_status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stoull(line.substr(std::strlen(field) + 1));
  }
  return 0;
}

size_t mem_available_kib() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) return std::stoull(line.substr(13));
  }
  return 0;
}

}  // namespace

TEST_CASE("every transfer kind works with a 64 KiB frame limit", "[transfer]") {
  auto opts = local_options(4);
  opts.max_frame_bytes = 65536;
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"dp", 2}, {"tp", 2}});

  SECTION("from_local and fetch, below, at and far above the limit") {
    for (int64_t n : {int64_t{1000}, int64_t{65536}, int64_t{3} << 20, int64_t{40} << 20}) {
      INFO("bytes " << n);
      const at::Tensor v = pattern(n, n);
      Tensor t = from_local(mesh, v);
      for (int r = 0; r < 4; ++r) REQUIRE(at::equal(t.fetch(mesh.shape().coord_of(r)).get(), v));
    }
  }
  SECTION("scatter and fetch_all") {
    const at::Tensor v = pattern(int64_t{8} << 20, 3).reshape({4, -1});
    Tensor t = scatter(mesh, v, 0, "dp");
    auto shards = t.fetch_all();
    REQUIRE(shards.size() == 4);
    REQUIRE(at::equal(shards[0], v.chunk(2, 0)[0]));
    REQUIRE(at::equal(shards[3], v.chunk(2, 0)[1]));
  }
  SECTION("to_mesh between sub-meshes") {
    const at::Tensor v = at::rand({1 << 20});  // 4 MiB
    DeviceMesh a = mesh.slice("dp", 0);
    DeviceMesh b = mesh.slice("dp", 1);
    Tensor t = from_local(a, v).to_mesh(b);
    for (auto& s : t.fetch_all()) REQUIRE(at::equal(s, v));
  }
  SECTION("collectives set up through the rendezvous, results fetched") {
    const at::Tensor v = at::ones({1 << 18});
    Tensor t = all_reduce(from_local(mesh, v), {"dp", "tp"});
    REQUIRE(at::equal(t.fetch({{"dp", 1}, {"tp", 1}}).get(), v * 4));
  }
  SECTION("remote-function arguments larger than a frame") {
    mesh.load_library(COX_TEST_PLUGIN);
    std::vector<double> scalars(20000, 0.5);  // 160 KB of arguments
    const at::Tensor p = at::ones({4});
    const at::Tensor g = at::ones({4});
    Tensor tp = from_local(mesh, p);
    call_remote(mesh, "sgd_step", {tp, from_local(mesh, g)}, scalars);
    REQUIRE(at::allclose(tp.fetch({{"dp", 0}, {"tp", 1}}).get(), p - 0.5 * g));
  }
  ctl.sync(30000ms);
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("controller memory stays bounded while it moves far more than it holds", "[transfer][memory]") {
  auto opts = local_options(1);
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"w", 1}});
  const int64_t n = int64_t{256} << 20;  // 256 MiB per transfer
  at::Tensor v = pattern(n, 7);
  Tensor t = from_local(mesh, v);
  at::Tensor back = t.fetch({0}).get();
  REQUIRE(at::equal(back, v));
  back = at::Tensor();
  // The source, one result, and the chunks in flight: sending and fetching
  // it eight times more must not add a copy of it.
  const size_t before = proc_status_kib("VmHWM:");
  for (int i = 0; i < 8; ++i) {
    Tensor u = from_local(mesh, v);
    at::Tensor got = u.fetch({0}).get();
    REQUIRE(got.nbytes() == v.nbytes());
  }
  const size_t grew_kib = proc_status_kib("VmHWM:") - before;
  INFO("peak grew by " << grew_kib / 1024 << " MiB while moving " << 16 * (n >> 20) << " MiB");
  REQUIRE(grew_kib < size_t{(n >> 10)} / 2);
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("replies nobody reads are released", "[transfer][memory]") {
  Controller ctl = Controller::local(local_options(2));
  DeviceMesh mesh = ctl.mesh({{"w", 2}});
  Tensor t = from_local(mesh, at::ones({1 << 16}));
  SECTION("dropped futures") {
    for (int i = 0; i < 20; ++i) {
      TensorFuture f = t.fetch({i % 2});
      (void)f;
    }
  }
  SECTION("a fetch_all that throws half-way") {
    // A shard that is an error value on rank 0 only: an integer division
    // by zero there, by one on rank 1.
    Tensor num = from_local(mesh, at::ones({1 << 16}, at::kLong));
    Tensor den = scatter(mesh, at::arange(2, at::kLong), 0, "w");
    Tensor bad = call_op("aten::floor_divide", "", {num, den})[0];
    for (int i = 0; i < 5; ++i) REQUIRE_THROWS_AS(bad.fetch_all(), RemoteError);
  }
  ctl.sync(30000ms);  // every reply is in by now
  REQUIRE(impl_of(ctl).held_replies() == 0);
}

TEST_CASE("one shard over 4 GiB goes there and back", "[.][transfer][large]") {
  const int64_t n = (int64_t{4} << 30) + (int64_t{1} << 28) + 3;  // 4.25 GiB + 3 bytes
  // The source, the worker's copy and the fetched result, with room to spare.
  const size_t need_kib = 3 * static_cast<size_t>(n >> 10) + (size_t{3} << 20);
  if (mem_available_kib() < need_kib) {
    WARN("skipped: needs " << (need_kib >> 20) << " GiB of available memory, this machine has "
                           << (mem_available_kib() >> 20) << " GiB");
    return;
  }
  Controller ctl = Controller::local(local_options(1));
  DeviceMesh mesh = ctl.mesh({{"w", 1}});
  at::Tensor v = at::empty({n}, at::kByte);
  // A pattern that differs across every 4 GiB boundary.
  v.fill_(1);
  v.narrow(0, 0, 4096).fill_(7);
  v.narrow(0, (int64_t{1} << 32) - 2048, 4096).fill_(9);
  v.narrow(0, n - 100, 100).fill_(11);
  Tensor t = from_local(mesh, v);
  // The worker has the bytes where they belong, on both sides of 4 GiB.
  for (int64_t at : {int64_t{0}, (int64_t{1} << 32) - 2048, n - 4096}) {
    INFO("at byte " << at);
    REQUIRE(t.narrow(0, at, 4096).to(at::kLong).sum().item<int64_t>() == v.narrow(0, at, 4096).to(at::kLong).sum().item<int64_t>());
  }
  at::Tensor back = t.fetch({0}).get();
  REQUIRE(back.numel() == n);
  REQUIRE(at::equal(back, v));
  REQUIRE(ctl.lost_workers().empty());
}
