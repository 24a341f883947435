// Wrong op calls fail at the call site: cox::InvalidArgument naming the bad
// value, thrown by the controller before anything is sent, also where
// libtorch's meta kernels let the call through (tensor/checks.cpp). And the
// correct calls next to each rule still run, with libtorch's results.
#include <ATen/ATen.h>
#include <torch/version.h>

#include <cox/errors.hpp>
#include <cox/tensor.hpp>

#include <catch2/catch.hpp>

#include <functional>
#include <string>
#include <vector>

using namespace cox;
using namespace std::chrono_literals;

namespace {

Controller& controller() {
  static Controller ctl = [] {
    ControllerOptions o;
    o.workers = 2;
    o.worker_path = COX_TEST_WORKER;
    return Controller::local(o);
  }();
  return ctl;
}

DeviceMesh mesh() { return controller().mesh({{"x", 2}}); }

struct Inputs {
  explicit Inputs(const DeviceMesh& m)
      : f45(zeros(m, {4, 5})),
        f46(zeros(m, {4, 6})),
        f5(zeros(m, {5})),
        f3d(zeros(m, {2, 4, 5})),
        d53(zeros(m, {5, 3}, {at::kDouble})),
        d5(zeros(m, {5}, {at::kDouble})),
        l53(zeros(m, {5, 3}, {at::kLong})),
        l45(zeros(m, {4, 5}, {at::kLong})),
        l4(zeros(m, {4}, {at::kLong})),
        l2(zeros(m, {2}, {at::kLong})),
        l22(zeros(m, {2, 2}, {at::kLong})),
        l3d(zeros(m, {2, 5, 3}, {at::kLong})),
        i4(zeros(m, {4}, {at::kInt})),
        b44(zeros(m, {4, 4}, {at::kBool})),
        b4(zeros(m, {4}, {at::kBool})),
        f2(zeros(m, {2})),
        f4(zeros(m, {4})),
        empty(zeros(m, {0})) {}
  Tensor f45, f46, f5, f3d, d53, d5, l53, l45, l4, l2, l22, l3d, i4, b44, b4, f2, f4, empty;
};

struct WrongCall {
  const char* what;
  std::function<void(const Inputs&, const DeviceMesh&)> call;
  // Each must appear in the message. With libtorch 2 the meta kernels
  // refuse more of these calls themselves, in their own words (the message
  // still names the op and, in its argument list, each input's dtype and
  // sizes): there only the "aten::" names are asked for.
  std::vector<std::string> names;
};

std::vector<WrongCall> wrong_calls() {
  return {
      // --- dtypes the kernels do not promote or do not implement ---------------------
      {"matmul float32 by int64", [](auto& t, auto&) { t.f45.matmul(t.l53); }, {"aten::matmul", "'other' is Long", "Float"}},
      {"mm float32 by float64", [](auto& t, auto&) { t.f45.mm(t.d53); }, {"aten::mm", "'mat2' is Double"}},
      {"bmm float32 by int64", [](auto& t, auto&) { t.f3d.bmm(t.l3d); }, {"aten::bmm", "Long"}},
      {"matmul of bools", [](auto& t, auto&) { t.b44.matmul(t.b44); }, {"'self' is Bool"}},
      {"matmul 1-d float32 by float64 (dot)", [](auto& t, auto&) { t.f5.matmul(t.d5); }, {"Double"}},
      {"linear with a float64 weight", [](auto& t, auto&) { linear(t.f45, t.d53.t()); }, {"aten::linear", "'weight' is Double"}},
      {"layer_norm with float64 parameters", [](auto& t, auto&) { layer_norm(t.f45, {5}, t.d5, t.d5); },
       {"'weight' is Double", "'input' is Float"}},
      {"call_op bitwise_and of float and int64",
       [](auto& t, auto&) { call_op("aten::bitwise_and", "Tensor", {t.f4, t.l4}); }, {"aten::bitwise_and.Tensor", "'self' is Float"}},
      {"call_op bitwise_not of float", [](auto& t, auto&) { call_op("aten::bitwise_not", "", {t.f4}); }, {"Float", "integer or bool"}},
      {"call_op bitwise_and with a float scalar", [](auto& t, auto&) { call_op("aten::bitwise_and", "Scalar", {t.l4, 1.5}); },
       {"'other'", "1.5"}},
      {"call_op bitwise_left_shift of bools",
       [](auto& t, auto&) { call_op("aten::bitwise_left_shift", "Tensor", {t.b4, t.b4}); }, {"'self' is Bool"}},
      {"gelu of int64", [](auto& t, auto&) { gelu(t.l4); }, {"aten::gelu", "'self' is Long", "floating-point"}},
      {"silu of int64", [](auto& t, auto&) { silu(t.l4); }, {"'self' is Long"}},
      {"softmax of int64", [](auto& t, auto&) { softmax(t.l45, 1); }, {"aten::softmax", "'self' is Long"}},
      {"log_softmax of int64", [](auto& t, auto&) { log_softmax(t.l45, 1); }, {"'self' is Long"}},
      {"mse_loss of int64", [](auto& t, auto&) { mse_loss(t.l4, t.l4); }, {"aten::mse_loss", "'self' is Long"}},
      {"abs of bool", [](auto& t, auto&) { t.b4.abs(); }, {"aten::abs", "'self' is Bool"}},
      {"relu of bool", [](auto& t, auto&) { relu(t.b4); }, {"aten::relu", "Bool"}},
      {"remainder of two bools", [](auto& t, auto&) { call_op("aten::remainder", "Tensor", {t.b4, t.b4}); }, {"Bool"}},
      {"randn of int64", [](auto&, auto& m) { randn(m, {2}, {at::kLong}); }, {"aten::randn", "dtype Long"}},
      // --- indices, masks and targets ----------------------------------------------------
      {"index_select with a float index", [](auto& t, auto&) { t.f45.index_select(0, t.f2); },
       {"aten::index_select", "'index' is Float", "Long or Int"}},
      {"index_select with a 2-d index", [](auto& t, auto&) { t.f45.index_select(0, t.l22); }, {"'index' has 2 dims", "[2, 2]"}},
      {"index_select on a missing dim", [](auto& t, auto&) { t.f45.index_select(3, t.l2); }, {"aten::index_select", "3"}},
      {"embedding with float indices", [](auto& t, auto&) { embedding(t.f45, t.f2); }, {"aten::embedding", "Float"}},
      {"call_op index_fill with a float index",
       [](auto& t, auto&) { call_op("aten::index_fill", "int_Scalar", {t.f45, int64_t{0}, t.f2, 1.0}); }, {"'index' is Float"}},
      {"call_op take with an int32 index (no meta kernel)",
       [](auto& t, auto&) { call_op("aten::take", "", {t.f45, t.i4}); }, {"aten::take", "'index' is Int"}},
      {"call_op masked_fill with a float mask",
       [](auto& t, auto&) { call_op("aten::masked_fill", "Scalar", {t.f45, t.f45, 1.0}); }, {"'mask' is Float"}},
      {"call_op masked_select with an int64 mask (no meta kernel)",
       [](auto& t, auto&) { call_op("aten::masked_select", "", {t.f45, t.l45}); }, {"'mask' is Long"}},
      {"call_op where with a float condition (no meta kernel)",
       [](auto& t, auto&) { call_op("aten::where", "self", {t.f4, t.f4, t.f4}); }, {"aten::where.self", "'condition' is Float"}},
      {"nll_loss with float targets", [](auto& t, auto&) { nll_loss(t.f45, t.f4); }, {"aten::nll_loss", "'target' is Float"}},
      {"cross_entropy with int32 targets", [](auto& t, auto&) { cross_entropy(t.f45, t.i4); }, {"'target' is Int"}},
      {"cross_entropy with probabilities of the wrong sizes", [](auto& t, auto&) { cross_entropy(t.f45, t.f4); },
       {"'target' is Float of sizes [4]", "[4, 5]"}},
      // --- dims and reductions -----------------------------------------------------------
      {"sum over a missing dim", [](auto& t, auto&) { t.f45.sum({2}); }, {"aten::sum", "got 2"}},
      {"mean over a missing dim", [](auto& t, auto&) { t.f45.mean({-3}); }, {"got -3"}},
      {"max over a missing dim", [](auto& t, auto&) { t.f45.max(2); }, {"got 2"}},
      {"argmax over a missing dim", [](auto& t, auto&) { t.f45.argmax(3); }, {"got 3"}},
      {"max of an empty tensor", [](auto& t, auto&) { t.empty.max(); }, {"aten::max", "no elements", "[0]"}},
      {"call_op kthvalue with k past the dim (no meta kernel)",
       [](auto& t, auto&) { call_op("aten::kthvalue", "", {t.f45, int64_t{7}}); }, {"k 7", "size 5"}},
      {"transpose of a missing dim", [](auto& t, auto&) { t.f45.transpose(0, 2); }, {"got 2"}},
      {"squeeze of a missing dim", [](auto& t, auto&) { t.f45.squeeze(3); }, {"got 3"}},
      {"softmax over a missing dim", [](auto& t, auto&) { softmax(t.f45, -3); }, {"got -3"}},
      // --- cat and stack -----------------------------------------------------------------
      {"cat of mismatched sizes", [](auto& t, auto&) { cat({t.f45, t.f46}, 0); }, {"aten::cat", "Expected size 5 but got size 6"}},
      {"cat along a missing dim", [](auto& t, auto&) { cat({t.f45, t.f45}, 2); }, {"got 2"}},
      {"cat of 2-d and 1-d", [](auto& t, auto&) { cat({t.f45, t.f5}, 0); }, {"got 2 and 1"}},
      {"stack of mismatched sizes", [](auto& t, auto&) { stack({t.f45, t.f46}); }, {"aten::stack", "[4, 6]"}},
      // --- views and shapes --------------------------------------------------------------
      {"view with sizes of another numel", [](auto& t, auto&) { t.f45.view({7}); }, {"aten::view", "[7]", "20"}},
      {"view with two -1", [](auto& t, auto&) { t.f45.view({-1, -1}); }, {"only one dimension can be inferred"}},
      {"view of a transposed tensor", [](auto& t, auto&) { t.f45.t().view({20}); }, {"view size is not compatible"}},
      {"reshape with sizes of another numel", [](auto& t, auto&) { t.f45.reshape({3, 7}); }, {"[3, 7]", "20"}},
      {"narrow past the end", [](auto& t, auto&) { t.f45.narrow(0, 3, 5); }, {"start (3) + length (5)"}},
      {"select past the end", [](auto& t, auto&) { t.f45.select(0, 4); }, {"index 4"}},
      {"copy_ from sizes that do not broadcast", [](auto& t, auto&) { Tensor d = t.f45; d.copy_(t.f46); },
       {"aten::copy_", "'src' of sizes [4, 6]", "[4, 5]"}},
      {"call_op tril of a 1-d tensor", [](auto& t, auto&) { call_op("aten::tril", "", {t.f5}); }, {"1 dim", "[5]"}},
      // --- meshes (where a shard lives) --------------------------------------------------
      {"an op mixing tensors of a sub-mesh and its mesh",
       [](auto& t, auto& m) { t.f4 + zeros(m.slice("x", 0, 1), {4}); }, {"aten::add", "used in an op on mesh"}},
      {"an op mixing tensors of a mesh and its transpose",
       [](auto& t, auto&) {
         DeviceMesh two = controller().mesh({{"a", 1}, {"b", 2}});
         zeros(two, {4}) + zeros(two.transpose("a", "b"), {4});
         (void)t;
       },
       {"used in an op on mesh", "{b=2, a=1}"}},
      // --- call_op by name ---------------------------------------------------------------
      {"call_op matmul float32 by int64", [](auto& t, auto&) { call_op("aten::matmul", "", {t.f45, t.l53}); }, {"'other' is Long"}},
      {"call_op of an unknown op", [](auto& t, auto&) { call_op("aten::no_such_op", "", {t.f4}); }, {"unknown op 'aten::no_such_op'"}},
      {"call_op with too many arguments", [](auto& t, auto&) { call_op("aten::relu", "", {t.f4, int64_t{1}}); },
       {"aten::relu takes 1 arguments, got 2"}},
      {"call_op without a required argument", [](auto& t, auto&) { call_op("aten::mm", "", {t.f45}); },
       {"argument 1 ('mat2') is required"}},
  };
}

}  // namespace

TEST_CASE("wrong calls throw InvalidArgument at the call site, naming the bad value", "[tensor][call_site]") {
  DeviceMesh m = mesh();
  const Inputs t(m);
  m.sync(60000ms);
  const int64_t live = m.live_tensors({{"x", 1}});
  const auto calls = wrong_calls();
  REQUIRE(calls.size() >= 30);
  for (const WrongCall& c : calls) {
    INFO("call: " << c.what);
    try {
      c.call(t, m);
      FAIL("no InvalidArgument");
    } catch (const InvalidArgument& e) {
      INFO("message: " << e.what());
      for (const std::string& name : c.names) {
        if (TORCH_VERSION_MAJOR < 2 || name.rfind("aten::", 0) == 0) CHECK_THAT(e.what(), Catch::Contains(name));
      }
    }
  }
  // Nothing was sent: no error reached a worker, and no output was left
  // there with no handle to free it.
  m.sync(60000ms);
  CHECK(m.live_tensors({{"x", 1}}) == live);
}

TEST_CASE("a wrong call is refused again when its signature repeats", "[tensor][call_site]") {
  // Refused calls are not cached as known signatures.
  DeviceMesh m = mesh();
  const Inputs t(m);
  for (int i = 0; i < 2; ++i) {
    REQUIRE_THROWS_WITH(t.f45.matmul(t.l53), Catch::Contains("aten::matmul(Float[4, 5], Long[5, 3])"));
    REQUIRE_THROWS_AS(call_op("aten::bitwise_and", "Tensor", {t.f4, t.l4}), InvalidArgument);
  }
}

TEST_CASE("correct calls next to each rule still run, with libtorch's results", "[tensor][call_site]") {
  DeviceMesh m = mesh();
  const at::Tensor a = at::arange(20, at::kFloat).view({4, 5}) / 7;
  const at::Tensor li = at::arange(20, at::kLong).view({4, 5}) % 5;
  const Tensor ra = from_local(m, a), rli = from_local(m, li);
  auto same = [](const Tensor& remote, const at::Tensor& expected) {
    INFO("expected " << expected.scalar_type() << expected.sizes());
    REQUIRE(remote.dtype() == expected.scalar_type());
    REQUIRE(remote.sizes() == expected.sizes().vec());
    for (const at::Tensor& shard : remote.fetch_all(30000ms)) {
      if (at::isFloatingType(expected.scalar_type())) {
        REQUIRE(at::allclose(shard, expected));
      } else {
        REQUIRE(at::equal(shard, expected));
      }
    }
  };
  // int64 matmul (CPU has it), an int32 index, a float output dtype for an
  // integer softmax, class probabilities as targets, integer bitwise ops, a
  // bool operand with a number, bool masks, copy_ that broadcasts, ops
  // without meta kernels with good arguments.
  same(rli.matmul(rli.t()), li.matmul(li.t()));
  const at::Tensor idx32 = at::tensor({3, 0}, at::kInt);
  same(ra.index_select(1, from_local(m, idx32)), a.index_select(1, idx32));
  same(call_op("aten::softmax", "int", {rli, int64_t{1}, at::kFloat})[0], at::softmax(li, 1, at::kFloat));
  const at::Tensor probs = at::softmax(a, 1);
  same(cross_entropy(ra, from_local(m, probs)), at::cross_entropy_loss(a, probs));
  same(cross_entropy(ra, from_local(m, at::tensor({0, 4, 2, 1}, at::kLong))), at::cross_entropy_loss(a, at::tensor({0, 4, 2, 1}, at::kLong)));
  same(call_op("aten::bitwise_and", "Tensor", {rli, from_local(m, li.to(at::kInt))})[0], at::bitwise_and(li, li.to(at::kInt)));
  const at::Tensor mask = li > 2;
  same(call_op("aten::bitwise_and", "Tensor", {from_local(m, mask), from_local(m, mask)})[0], at::bitwise_and(mask, mask));
  same(call_op("aten::remainder", "Scalar", {from_local(m, mask), int64_t{2}})[0], at::remainder(mask, 2));
  same(call_op("aten::masked_fill", "Scalar", {ra, from_local(m, mask), 1.0})[0], a.masked_fill(mask, 1.0));
  Tensor dst = zeros(m, {4, 5});
  dst.copy_(from_local(m, at::arange(5, at::kDouble)));
  same(dst, at::arange(5, at::kFloat).expand({4, 5}));
  same(call_op("aten::take", "", {ra, from_local(m, at::tensor({19, 0}, at::kLong))})[0], at::take(a, at::tensor({19, 0}, at::kLong)));
  same(call_op("aten::kthvalue", "", {ra, int64_t{5}})[0], std::get<0>(at::kthvalue(a, 5)));
  same(call_op("aten::tril", "", {ra})[0], at::tril(a));
  same(ra.max(), a.max());
  same(call_op("aten::max", "other", {zeros(m, {0}), zeros(m, {0})})[0], at::zeros({0}));
  same(gelu(ra), at::gelu(a));
  same(call_op("aten::abs", "", {rli.neg()})[0], li);
  // libtorch 1.13's meta one_hot refuses any call ("from meta tensor"): it
  // runs as an op without a meta kernel.
  const at::Tensor classes = at::tensor({0, 3, 1}, at::kLong);
  same(call_op("aten::one_hot", "", {from_local(m, classes), int64_t{5}})[0], at::one_hot(classes, 5));
  m.sync(60000ms);
}
