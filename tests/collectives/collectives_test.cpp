// Collectives and transfers on real worker processes (Gloo on CPU): every
// op and reduce kind on meshes {4}, {2,2}, {2,3}, {2,1,2}, whole and sliced,
// over one dim, several dims and all dims, in float32, float64 and int64.
// Inputs depend on the worker; expected results are worked out here, by
// brute force over coordinates, from the same formula.
#include <ATen/ATen.h>

#include <cox/collectives.hpp>
#include <cox/errors.hpp>
#include <cox/tensor.hpp>

#include <catch2/catch.hpp>

#include <signal.h>

#include <algorithm>
#include <thread>

using namespace cox;
using namespace std::chrono_literals;

namespace {

Controller& controller() {
  static Controller ctl = [] {
    ControllerOptions o;
    o.workers = 6;
    o.worker_path = COX_TEST_WORKER;
    return Controller::local(o);
  }();
  return ctl;
}

DeviceMesh flat() { return controller().mesh({{"w", 6}}); }

// Whether every worker in `ranks` reports (by its heartbeats) that it is
// running `what`, within 20 s.
bool in_collective(Controller& ctl, const std::vector<int>& ranks, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto status = ctl.status();
    if (std::all_of(ranks.begin(), ranks.end(), [&](int r) {
          const auto& s = status[static_cast<size_t>(r)];
          return s.state == WorkerStatus::State::kBusy && s.doing == what;
        })) {
      return true;
    }
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

struct MeshCase {
  std::string name;
  DeviceMesh mesh;
};

// The meshes under test: whole-controller meshes and slices with an offset.
std::vector<MeshCase> meshes() {
  const DeviceMesh w = flat();
  return {
      {"{4} (ranks 0-3)", w.slice("w", 0, 4).rename("w", "x")},
      {"{2,2} (ranks 2-5)", w.slice("w", 2, 6).split("w", {"a", "b"}, {2, 2})},
      {"{2,3}", controller().mesh({{"a", 2}, {"b", 3}})},
      {"{2,1,2} (ranks 1-4)", w.slice("w", 1, 5).split("w", {"a", "b", "c"}, {2, 1, 2})},
      {"{3} (ranks 1,3,5)", controller().mesh({{"a", 3}, {"b", 2}}).slice("b", 1).rename("a", "x")},
  };
}

constexpr int64_t kRows = 12, kCols = 12;

// The input of the worker at row-major index `lin` of its mesh: small
// positive integers, exact in every dtype, products included.
at::Tensor local_input(int64_t lin, at::ScalarType dtype) {
  at::Tensor i = at::arange(kRows * kCols, at::kLong).view({kRows, kCols});
  return ((i * 3 + lin * 5) % 7 + 1).to(dtype);
}

Tensor remote_input(const DeviceMesh& m, at::ScalarType dtype) {
  // lin = row-major index of each worker within the mesh.
  const Shape& s = m.shape();
  Tensor lin = zeros(m, {}, {at::kLong});
  int64_t stride = 1;
  for (size_t d = s.ndim(); d-- > 0;) {
    lin = lin + coordinate(m, s.names()[d]) * static_cast<double>(stride);
    stride *= s.sizes()[d];
  }
  Tensor i = arange(m, kRows * kCols, {at::kLong}).view({kRows, kCols});
  Tensor v = call_op("aten::remainder", "Scalar", {i * 3.0 + lin * 5.0, int64_t{7}})[0] + 1.0;
  return v.to(dtype);
}

// Row-major indices of the members of each worker's group, in group order
// (row-major over `dims` as listed), by brute force over coordinates.
std::vector<std::vector<int64_t>> groups_by_hand(const Shape& s, std::vector<std::string> dims) {
  if (dims.empty()) dims = s.names();
  std::vector<size_t> along;
  for (const auto& d : dims) along.push_back(s.index_of(d));
  const int64_t n = s.size();
  std::vector<Coord> coords;
  const auto ranks = s.ranks();
  for (int64_t r : ranks) coords.push_back(s.coord_of(r));
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> members;
    for (int64_t j = 0; j < n; ++j) {
      bool same = true;
      for (size_t d = 0; d < s.ndim(); ++d) {
        if (std::find(along.begin(), along.end(), d) == along.end() && coords[i][d] != coords[j][d]) same = false;
      }
      if (same) members.push_back(j);
    }
    std::sort(members.begin(), members.end(), [&](int64_t a, int64_t b) {
      for (size_t d : along) {
        if (coords[a][d] != coords[b][d]) return coords[a][d] < coords[b][d];
      }
      return false;
    });
    out[static_cast<size_t>(i)] = members;
  }
  return out;
}

at::Tensor reduce_by_hand(const std::vector<at::Tensor>& xs, Reduce op) {
  at::Tensor acc = xs[0].to(at::kDouble);
  for (size_t i = 1; i < xs.size(); ++i) {
    const at::Tensor x = xs[i].to(at::kDouble);
    switch (op) {
      case Reduce::Sum:
      case Reduce::Avg: acc = acc + x; break;
      case Reduce::Product: acc = acc * x; break;
      case Reduce::Min: acc = at::minimum(acc, x); break;
      case Reduce::Max: acc = at::maximum(acc, x); break;
    }
  }
  const auto dtype = xs[0].scalar_type();
  if (op == Reduce::Avg) {
    const double n = static_cast<double>(xs.size());
    acc = at::isFloatingType(dtype) ? acc / n : at::floor(acc / n);  // inputs are positive: trunc == floor
  }
  return acc.to(dtype);
}

void require_shards(const Tensor& result, const std::vector<at::Tensor>& expected) {
  const auto shards = result.fetch_all(60000ms);
  REQUIRE(shards.size() == expected.size());
  for (size_t i = 0; i < shards.size(); ++i) {
    INFO("worker " << i << " of the mesh");
    REQUIRE(result.sizes() == expected[i].sizes().vec());
    REQUIRE(shards[i].sizes() == expected[i].sizes());
    REQUIRE(shards[i].scalar_type() == expected[i].scalar_type());
    if (at::isFloatingType(expected[i].scalar_type())) {
      REQUIRE(at::allclose(shards[i], expected[i], 1e-5, 1e-5));
    } else {
      REQUIRE(at::equal(shards[i], expected[i]));
    }
  }
}

const char* reduce_name(Reduce op) {
  switch (op) {
    case Reduce::Sum: return "sum";
    case Reduce::Avg: return "avg";
    case Reduce::Min: return "min";
    case Reduce::Max: return "max";
    case Reduce::Product: return "product";
  }
  return "?";
}

std::vector<Dims> dim_choices(const Shape& s) {
  std::vector<Dims> out;
  for (const auto& d : s.names()) out.push_back({d});                           // one dim
  if (s.ndim() >= 2) out.push_back({s.names().back(), s.names().front()});     // several, listed out of order
  out.push_back({});                                                            // all dims
  return out;
}

}  // namespace

TEST_CASE("every collective and reduce kind matches a by-hand result", "[collectives]") {
  const std::vector<Reduce> reduces{Reduce::Sum, Reduce::Avg, Reduce::Min, Reduce::Max, Reduce::Product};
  for (const MeshCase& mc : meshes()) {
    const Shape& s = mc.mesh.shape();
    for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kLong}) {
      const Tensor x = remote_input(mc.mesh, dtype);
      std::vector<at::Tensor> inputs;
      for (int64_t i = 0; i < s.size(); ++i) inputs.push_back(local_input(i, dtype));
      for (const Dims& dims : dim_choices(s)) {
        const auto groups = groups_by_hand(s, dims);
        const int64_t n = static_cast<int64_t>(groups[0].size());
        auto members_inputs = [&](size_t i) {
          std::vector<at::Tensor> xs;
          for (int64_t j : groups[i]) xs.push_back(inputs[static_cast<size_t>(j)]);
          return xs;
        };
        auto my_index = [&](size_t i) {
          const auto& g = groups[i];
          return std::find(g.begin(), g.end(), static_cast<int64_t>(i)) - g.begin();
        };
        INFO("mesh " << mc.name << ", dims [" << (dims.empty() ? std::string("all") : dims[0]) << (dims.size() > 1 ? ", ..." : "")
                     << "], dtype " << c10::toString(dtype) << ", group size " << n);

        for (Reduce op : reduces) {
          INFO("reduce " << reduce_name(op));
          std::vector<at::Tensor> expected;
          for (size_t i = 0; i < inputs.size(); ++i) expected.push_back(reduce_by_hand(members_inputs(i), op));
          require_shards(all_reduce(x, dims, op), expected);

          const int64_t rs_dim = op == Reduce::Max ? 1 : 0;
          std::vector<at::Tensor> rs;
          for (size_t i = 0; i < inputs.size(); ++i) rs.push_back(expected[i].chunk(n, rs_dim)[my_index(i)]);
          require_shards(reduce_scatter(x, dims, op, rs_dim), rs);
        }
        {
          Tensor y = x.clone();
          all_reduce_(y, dims, Reduce::Sum);
          std::vector<at::Tensor> expected;
          for (size_t i = 0; i < inputs.size(); ++i) expected.push_back(reduce_by_hand(members_inputs(i), Reduce::Sum));
          require_shards(y, expected);
        }
        for (int64_t dim : {0, 1}) {
          INFO("all_gather dim " << dim);
          std::vector<at::Tensor> expected;
          for (size_t i = 0; i < inputs.size(); ++i) expected.push_back(at::cat(members_inputs(i), dim));
          require_shards(all_gather(x, dims, dim), expected);
        }
        for (auto [split, concat] : {std::pair<int64_t, int64_t>{0, 0}, {1, 0}, {0, 1}}) {
          INFO("all_to_all split " << split << " concat " << concat);
          std::vector<at::Tensor> expected;
          for (size_t i = 0; i < inputs.size(); ++i) {
            std::vector<at::Tensor> parts;
            for (const at::Tensor& in : members_inputs(i)) parts.push_back(in.chunk(n, split)[my_index(i)]);
            expected.push_back(at::cat(parts, concat));
          }
          require_shards(all_to_all(x, dims, split, concat), expected);
        }
        {
          const int64_t root = n - 1;
          std::vector<at::Tensor> expected;
          for (size_t i = 0; i < inputs.size(); ++i) expected.push_back(members_inputs(i)[static_cast<size_t>(root)]);
          require_shards(broadcast(x, dims, root), expected);
        }
      }
    }
    barrier(mc.mesh);
    mc.mesh.sync(60000ms);
  }
}

TEST_CASE("DeviceMesh::groups are the collectives' groups, on transposed and permuted meshes too", "[collectives][mesh]") {
  const DeviceMesh ab = controller().mesh({{"a", 2}, {"b", 3}});
  const std::vector<MeshCase> cases = {
      {"{a=2, b=3}", ab},
      {"{b=3, a=2} (transposed)", ab.transpose("a", "b")},
      {"{z=3, x=1, y=2} (permuted)", flat().split("w", {"x", "y", "z"}, {1, 2, 3}).permute({"z", "x", "y"})},
      {"{b=2, a=2} (ranks 2-5, transposed)", flat().slice("w", 2, 6).split("w", {"a", "b"}, {2, 2}).transpose("b", "a")},
  };
  for (const MeshCase& mc : cases) {
    const Shape& s = mc.mesh.shape();
    const auto ranks = s.ranks();
    for (const Dims& dims : dim_choices(s)) {
      INFO("mesh " << mc.name << ", dims [" << (dims.empty() ? std::string("all") : dims[0]) << (dims.size() > 1 ? ", ..." : "") << "]");
      // Against brute force over coordinates (row-major indices -> ranks).
      const auto groups = mc.mesh.groups(dims);
      const auto by_hand = groups_by_hand(s, dims);
      size_t covered = 0;
      for (const auto& g : groups) {
        std::vector<int64_t> lin;
        for (int64_t r : g) lin.push_back(s.local_index(r));
        for (int64_t i : lin) REQUIRE(by_hand[static_cast<size_t>(i)] == lin);
        covered += g.size();
      }
      REQUIRE(covered == ranks.size());
      // And the collectives use exactly these groups, in this order: each
      // worker gathers its group's global ranks.
      const Tensor mine = global_rank(mc.mesh).view({1});
      const Tensor gathered = all_gather(mine, dims, 0);
      const Tensor summed = all_reduce(mine, dims);
      for (const auto& g : groups) {
        const at::Tensor want = at::tensor(g, at::kLong);
        for (int64_t r : g) {
          INFO("worker " << r);
          REQUIRE(at::equal(gathered.fetch(s.coord_of(r)).get(30000ms), want));
          REQUIRE(summed.fetch(s.coord_of(r)).get(30000ms).item<int64_t>() == want.sum().item<int64_t>());
        }
      }
    }
    // Ops on the permuted mesh: coordinates and ranks agree with its shape.
    const Tensor lin = mesh_rank(mc.mesh) * 10.0 + coordinate(mc.mesh, s.names()[0]);
    for (int64_t r : ranks) {
      const Coord c = s.coord_of(r);
      REQUIRE(lin.fetch(c).get(30000ms).item<int64_t>() == s.local_index(r) * 10 + c[0]);
    }
    mc.mesh.sync(60000ms);
  }
}

TEST_CASE("global_rank and mesh_rank, fetched per coordinate", "[collectives][mesh]") {
  const DeviceMesh ab = controller().mesh({{"a", 2}, {"b", 3}});
  for (const DeviceMesh& m : {ab, ab.transpose("a", "b"), ab.slice("b", 1, 3), ab.permute({"b", "a"}).slice("a", 1)}) {
    const Shape& s = m.shape();
    INFO("mesh " << s.to_string(true));
    const Tensor global = global_rank(m), local = mesh_rank(m);
    REQUIRE(global.dtype() == at::kLong);
    REQUIRE(global.dim() == 0);
    REQUIRE(local.dtype() == at::kLong);
    REQUIRE(local.dim() == 0);
    int64_t i = 0;
    for (int64_t r : s.ranks()) {
      const Coord c = s.coord_of(r);
      REQUIRE(global.fetch(c).get(30000ms).item<int64_t>() == r);
      REQUIRE(local.fetch(c).get(30000ms).item<int64_t>() == i);
      REQUIRE(s.local_index(r) == i++);
    }
  }
}

TEST_CASE("mesh views and groups reject unknown and repeated dims", "[collectives][mesh][errors]") {
  const DeviceMesh ab = controller().mesh({{"a", 2}, {"b", 3}});
  auto message_of = [](auto f) -> std::string {
    try {
      f();
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "no InvalidArgument";
  };
  CHECK_THAT(message_of([&] { ab.groups({"c"}); }), Catch::Contains("has no dim 'c'"));
  CHECK_THAT(message_of([&] { ab.groups({"a", "a"}); }), Catch::Contains("'a' is listed twice"));
  CHECK_THAT(message_of([&] { ab.transpose("a", "c"); }), Catch::Contains("unknown mesh dimension 'c'"));
  CHECK_THAT(message_of([&] { ab.permute({"a"}); }), Catch::Contains("order [a]"));
  CHECK(ab.groups({}) == std::vector<std::vector<int64_t>>{{0, 1, 2, 3, 4, 5}});
  CHECK(ab.transpose("a", "b").groups({}) == std::vector<std::vector<int64_t>>{{0, 3, 1, 4, 2, 5}});
  CHECK(ab.groups({"a"}) == std::vector<std::vector<int64_t>>{{0, 3}, {1, 4}, {2, 5}});
}

TEST_CASE("a non-contiguous input and in-place results keep their layout", "[collectives]") {
  DeviceMesh m = controller().mesh({{"a", 2}, {"b", 3}});
  Tensor x = remote_input(m, at::kFloat).t();  // a transposed view
  std::vector<at::Tensor> inputs;
  for (int64_t i = 0; i < 6; ++i) inputs.push_back(local_input(i, at::kFloat).t());
  const auto groups = groups_by_hand(m.shape(), {"b"});
  std::vector<at::Tensor> expected;
  for (size_t i = 0; i < 6; ++i) {
    std::vector<at::Tensor> xs;
    for (int64_t j : groups[i]) xs.push_back(inputs[static_cast<size_t>(j)]);
    expected.push_back(reduce_by_hand(xs, Reduce::Sum));
  }
  require_shards(all_reduce(x, {"b"}), expected);
  Tensor y = x;
  all_reduce_(y, {"b"});
  require_shards(y, expected);
  require_shards(x, expected);  // the same tensor: reduced in place through the view
}

TEST_CASE("collectives reject bad arguments at the call site", "[collectives][errors]") {
  DeviceMesh m = controller().mesh({{"a", 2}, {"b", 3}});
  Tensor x = remote_input(m, at::kFloat);
  const int64_t live = m.live_tensors({{"a", 0}, {"b", 0}});
  auto message_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "(no InvalidArgument)";
  };
  CHECK_THAT(message_of([&] { all_reduce(x, {"tp"}); }), Catch::Contains("no dim 'tp'"));
  CHECK_THAT(message_of([&] { all_reduce(x, {"a", "a"}); }), Catch::Contains("'a' is listed twice"));
  // 12 rows do not split 5 ways; a 5-row tensor does not split over b (3).
  Tensor odd = x.narrow(0, 0, 5);
  CHECK_THAT(message_of([&] { reduce_scatter(odd, {"b"}); }),
             Catch::Contains("size 5") && Catch::Contains("group size 3"));
  CHECK_THAT(message_of([&] { all_to_all(odd, {"b"}, 0, 1); }), Catch::Contains("size 5"));
  CHECK_THAT(message_of([&] { all_gather(x, {"b"}, 2); }), Catch::Contains("dim 2 is out of range"));
  CHECK_THAT(message_of([&] { broadcast(x, {"b"}, 3); }), Catch::Contains("root 3"));
  CHECK_THAT(message_of([&] { all_reduce(x.to(at::kBool)); }), Catch::Contains("dtype Bool"));
  CHECK_THAT(message_of([&] { all_reduce(Tensor()); }), Catch::Contains("undefined"));
  // Nothing reached the workers: no new tensors there.
  CHECK(m.live_tensors({{"a", 0}, {"b", 0}}) <= live + 2);  // odd and the bool copy
}

TEST_CASE("to_mesh moves shards between the halves of a mesh, both ways", "[collectives][to_mesh]") {
  DeviceMesh m = controller().mesh({{"pp", 2}, {"dp", 3}});
  DeviceMesh stage0 = m.slice("pp", 0), stage1 = m.slice("pp", 1);
  // Stage 0's shards: distinct per worker.
  Tensor x = remote_input(stage0, at::kFloat);
  Tensor y = x.to_mesh(stage1);
  REQUIRE(y.mesh() == stage1);
  std::vector<at::Tensor> expected;
  for (int64_t i = 0; i < 3; ++i) expected.push_back(local_input(i, at::kFloat));
  require_shards(y, expected);
  // And back, after work on stage 1.
  Tensor z = (y * 2.0).to_mesh(stage0);
  for (auto& e : expected) e = e * 2;
  require_shards(z, expected);
  // int64 and a non-contiguous source.
  Tensor t = remote_input(stage1, at::kLong).t().to_mesh(stage0);
  std::vector<at::Tensor> et;
  for (int64_t i = 0; i < 3; ++i) et.push_back(local_input(i, at::kLong).t().contiguous());
  require_shards(t, et);
  // The same mesh: every worker keeps its shard.
  require_shards(x.to_mesh(stage0), {local_input(0, at::kFloat), local_input(1, at::kFloat), local_input(2, at::kFloat)});
  // Overlapping meshes: ranks 1,2 -> 2,3 (rank 2 both sends and receives).
  DeviceMesh w = flat();
  Tensor o = remote_input(w.slice("w", 1, 3), at::kFloat).to_mesh(w.slice("w", 2, 4));
  require_shards(o, {local_input(0, at::kFloat), local_input(1, at::kFloat)});
  // A swap: ranks 0,1 -> 1,0 through send_recv.
  DeviceMesh pair = w.slice("w", 0, 2);
  Tensor sw = send_recv(remote_input(pair, at::kFloat), pair, {1, 0});
  require_shards(sw, {local_input(1, at::kFloat), local_input(0, at::kFloat)});
}

TEST_CASE("to_mesh rejects meshes of another shape", "[collectives][to_mesh][errors]") {
  DeviceMesh m = controller().mesh({{"pp", 2}, {"dp", 3}});
  Tensor x = remote_input(m.slice("pp", 0), at::kFloat);
  try {
    x.to_mesh(m.slice("dp", 0));
    FAIL("expected InvalidArgument");
  } catch (const InvalidArgument& e) {
    CHECK_THAT(e.what(), Catch::Contains("dim sizes [2] vs [3]"));
  }
  CHECK_THROWS_AS(send_recv(x, m.slice("pp", 1), {0, 1, 3}), InvalidArgument);
  CHECK_THROWS_AS(send_recv(x, m.slice("pp", 1), {0, 1}), InvalidArgument);
}

TEST_CASE("a poisoned input makes error values, and peers do not hang", "[collectives][errors]") {
  DeviceMesh m = controller().mesh({{"a", 2}, {"b", 3}});
  Tensor x = remote_input(m, at::kFloat);
  // index_select out of range only where a == 1: an error value on those
  // three workers, a good value on the others.
  Tensor idx = call_op("aten::mul", "Scalar", {coordinate(m, "a"), int64_t{100}})[0].view({1});
  Tensor poisoned = x.index_select(0, idx);
  // Over b: the a == 1 row of groups is poisoned, the a == 0 row is fine.
  Tensor over_b = all_reduce(poisoned, {"b"});
  // Over a: every group has one poisoned member.
  Tensor over_a = all_gather(poisoned, {"a"});
  for (int64_t b = 0; b < 3; ++b) {
    at::Tensor good = over_b.fetch({{"a", 0}, {"b", b}}).get(30000ms);
    at::Tensor want = local_input(0, at::kFloat).index_select(0, at::zeros({1}, at::kLong)) +
                      local_input(1, at::kFloat).index_select(0, at::zeros({1}, at::kLong)) +
                      local_input(2, at::kFloat).index_select(0, at::zeros({1}, at::kLong));
    CHECK(at::allclose(good, want));
    try {
      over_b.fetch({{"a", 1}, {"b", b}}).get(30000ms);
      FAIL("expected RemoteError");
    } catch (const RemoteError& e) {
      CHECK_THAT(e.what(), Catch::Contains("index_select") || Catch::Contains("index"));
    }
    for (int64_t a = 0; a < 2; ++a) {
      try {
        over_a.fetch({{"a", a}, {"b", b}}).get(30000ms);
        FAIL("expected RemoteError");
      } catch (const RemoteError& e) {
        if (a == 0) CHECK_THAT(e.what(), Catch::Contains("is an error value"));
      }
    }
  }
  // The mesh and its communicators keep working.
  std::vector<at::Tensor> expected;
  for (int64_t i = 0; i < 6; ++i) expected.push_back(reduce_by_hand({local_input(i % 3, at::kFloat), local_input(i % 3 + 3, at::kFloat)}, Reduce::Sum));
  require_shards(all_reduce(x, {"a"}), expected);
  // A poisoned shard sent with to_mesh arrives as an error value naming its origin.
  Tensor moved = poisoned.to_mesh(m);
  try {
    m.sync(30000ms);
    moved.fetch({{"a", 1}, {"b", 0}}).get(30000ms);
    FAIL("expected RemoteError");
  } catch (const RemoteError& e) {
    CHECK_THAT(e.what(), Catch::Contains("index"));
  }
}

TEST_CASE("a worker killed during a collective ends in WorkerLost, not a hang", "[collectives][lost]") {
  ControllerOptions o;
  o.workers = 3;
  o.worker_path = COX_TEST_WORKER;
  o.heartbeat_interval = 100ms;
  o.heartbeat_timeout = 5000ms;
  o.output_sink = [](int, OutputStream, std::string_view) {};
  Controller ctl = Controller::local(o);
  DeviceMesh m = ctl.mesh({{"x", 3}});
  Tensor x = ones(m, {1 << 16});
  // Communicators set up and working.
  REQUIRE(all_reduce(x).fetch({{"x", 0}}).get(30000ms)[0].item<float>() == 3.0f);
  // Worker 2 is stopped, so workers 0 and 1 wait in the collective for it;
  // once they are seen waiting there, it is killed.
  ::kill(static_cast<pid_t>(ctl.worker_pid(2)), SIGSTOP);
  Tensor y = all_reduce(x);
  REQUIRE(in_collective(ctl, {0, 1}, "collective all_reduce"));
  ::kill(static_cast<pid_t>(ctl.worker_pid(2)), SIGKILL);
  for (int64_t r : {0, 1}) {
    try {
      y.fetch({{"x", r}}).get(30000ms);
      FAIL("expected WorkerLost");
    } catch (const WorkerLost& e) {
      CHECK(e.rank() == 2);
    }
  }
  // Collectives on groups without the lost worker still work; with it, they
  // fail at the call site.
  DeviceMesh alive = m.slice("x", 0, 2);
  CHECK(all_reduce(ones(alive, {4})).fetch({{"x", 1}}).get(30000ms)[0].item<float>() == 2.0f);
  CHECK_THROWS_AS(all_reduce(x), WorkerLost);
}

TEST_CASE("a worker lost before a communicator forms fails the rendezvous", "[collectives][lost]") {
  ControllerOptions o;
  o.workers = 3;
  o.worker_path = COX_TEST_WORKER;
  o.heartbeat_interval = 100ms;
  o.output_sink = [](int, OutputStream, std::string_view) {};
  Controller ctl = Controller::local(o);
  DeviceMesh m = ctl.mesh({{"x", 3}});
  Tensor x = ones(m, {8});
  // Worker 2 is stopped while 0 and 1 start setting up the group, then dies.
  ::kill(static_cast<pid_t>(ctl.worker_pid(2)), SIGSTOP);
  Tensor y = all_reduce(x);
  REQUIRE(in_collective(ctl, {0, 1}, "comm_init"));
  ::kill(static_cast<pid_t>(ctl.worker_pid(2)), SIGKILL);
  for (int64_t r : {0, 1}) {
    try {
      y.fetch({{"x", r}}).get(30000ms);
      FAIL("expected WorkerLost");
    } catch (const WorkerLost& e) {
      CHECK(e.rank() == 2);
    }
  }
}
