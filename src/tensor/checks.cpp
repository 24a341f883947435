// Call-site checks the meta kernels miss: per-op rules on the inputs'
// metadata (see checks.hpp).
#include "tensor/checks.hpp"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cox::tensor {
namespace {

// One argument of the call, by schema name.
class Call {
 public:
  Call(const c10::FunctionSchema& schema, const torch::jit::Stack& args) : schema_(schema), args_(args) {}

  // The argument named `name`; nullptr where the schema has none.
  const c10::IValue* arg(std::string_view name) const {
    const auto& a = schema_.arguments();
    for (size_t i = 0; i < a.size() && i < args_.size(); ++i) {
      if (a[i].name() == name) return &args_[i];
    }
    return nullptr;
  }
  // The defined tensor named `name`, or nullptr (absent, None, undefined).
  const at::Tensor* tensor(std::string_view name) const {
    const c10::IValue* v = arg(name);
    if (!v || !v->isTensor() || !v->toTensor().defined()) return nullptr;
    return &v->toTensor();
  }
  // Every defined tensor among `names` (all arguments when empty), lists
  // expanded, each with how to name it in a message.
  std::vector<std::pair<std::string, at::Tensor>> tensors(const std::vector<std::string_view>& names = {}) const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    const auto& a = schema_.arguments();
    for (size_t i = 0; i < a.size() && i < args_.size(); ++i) {
      if (names.size() && std::find(names.begin(), names.end(), a[i].name()) == names.end()) continue;
      const c10::IValue& v = args_[i];
      if (v.isTensor()) {
        if (v.toTensor().defined()) out.emplace_back(fmt::format("'{}'", a[i].name()), v.toTensor());
      } else if (v.isTensorList()) {
        const auto list = v.toTensorList();
        for (size_t k = 0; k < list.size(); ++k) {
          const at::Tensor t = list[k];
          if (t.defined()) out.emplace_back(fmt::format("'{}'[{}]", a[i].name(), k), t);
        }
      } else if (v.isList()) {  // Tensor?[] (indices)
        const auto list = v.toListRef();
        for (size_t k = 0; k < list.size(); ++k) {
          if (list[k].isTensor() && list[k].toTensor().defined()) {
            out.emplace_back(fmt::format("'{}'[{}]", a[i].name(), k), list[k].toTensor());
          }
        }
      }
    }
    return out;
  }
  bool has(std::string_view name) const { return arg(name) != nullptr; }

 private:
  const c10::FunctionSchema& schema_;
  const torch::jit::Stack& args_;
};

using Rule = std::function<void(const Call&)>;

[[noreturn]] void fail(const std::string& why) { throw std::invalid_argument(why); }

std::string dtype_name(at::ScalarType t) { return c10::toString(t); }
std::string sizes_of(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }
bool floating(at::ScalarType t) { return at::isFloatingType(t) || at::isComplexType(t); }
bool integral(at::ScalarType t, bool with_bool) { return at::isIntegralType(t, with_bool); }

// --- rules ---------------------------------------------------------------------

// The kernels need one dtype across these tensors (all tensor arguments when
// none are named): they do not promote.
Rule same_dtype(std::initializer_list<std::string_view> names = {}) {
  std::vector<std::string_view> keep(names);
  return [keep](const Call& c) {
    const auto ts = c.tensors(keep);
    for (size_t i = 1; i < ts.size(); ++i) {
      if (ts[i].second.scalar_type() != ts[0].second.scalar_type()) {
        fail(fmt::format("argument {} is {} where argument {} is {}: this op needs its tensors in one dtype (it does "
                         "not promote; convert one with .to(dtype))",
                         ts[i].first, dtype_name(ts[i].second.scalar_type()), ts[0].first,
                         dtype_name(ts[0].second.scalar_type())));
      }
    }
  };
}

// A floating-point (or complex) input, unless the call names a floating
// output dtype itself (softmax(x, dim, dtype)).
Rule floating_input(std::string_view name, bool dtype_arg = false) {
  return [name, dtype_arg](const Call& c) {
    if (dtype_arg) {
      if (const c10::IValue* d = c.arg("dtype"); d && !d->isNone()) {
        const auto t = static_cast<at::ScalarType>(d->toInt());
        if (!floating(t)) fail(fmt::format("dtype {}: this op computes in floating point only", dtype_name(t)));
        return;
      }
    }
    const at::Tensor* t = c.tensor(name);
    if (t && !floating(t->scalar_type())) {
      fail(fmt::format("argument '{}' is {}: this op has kernels for floating-point tensors only (convert it with "
                       ".to(at::kFloat))",
                       name, dtype_name(t->scalar_type())));
    }
  };
}

// The dtype argument, where given, is a floating-point one (random normal
// values).
Rule floating_dtype_arg() {
  return [](const Call& c) {
    const c10::IValue* d = c.arg("dtype");
    if (d && !d->isNone()) {
      const auto t = static_cast<at::ScalarType>(d->toInt());
      if (!floating(t)) fail(fmt::format("dtype {}: this op makes floating-point values only", dtype_name(t)));
    }
  };
}

// Integer (and, with_bool, bool) tensors only, and no floating-point scalar:
// bitwise ops, shifts, gcd.
Rule integral_inputs(bool with_bool) {
  return [with_bool](const Call& c) {
    for (const auto& [label, t] : c.tensors()) {
      if (!integral(t.scalar_type(), with_bool)) {
        fail(fmt::format("argument {} is {}: this op takes {} tensors only", label, dtype_name(t.scalar_type()),
                         with_bool ? "integer or bool" : "integer"));
      }
    }
    for (const char* name : {"other", "self"}) {
      const c10::IValue* v = c.arg(name);
      if (v && v->isDouble()) {
        fail(fmt::format("argument '{}' is the floating-point scalar {}: this op takes {} values only", name,
                         v->toDouble(), with_bool ? "integer or bool" : "integer"));
      }
    }
  };
}

// No bool tensors among these (abs, relu, matmul, remainder of bools).
Rule not_bool(std::initializer_list<std::string_view> names) {
  std::vector<std::string_view> keep(names);
  return [keep](const Call& c) {
    for (auto n : keep) {
      const at::Tensor* t = c.tensor(n);
      if (t && t->scalar_type() == at::kBool) {
        fail(fmt::format("argument '{}' is Bool: this op has no kernel for bool tensors (convert it with .to(dtype))",
                         n));
      }
    }
  };
}

// remainder/fmod of two bools (one bool operand with a number is fine).
Rule not_all_bool() {
  return [](const Call& c) {
    const auto ts = c.tensors({"self", "other"});
    if (ts.empty()) return;
    for (const auto& t : ts) {
      if (t.second.scalar_type() != at::kBool) return;
    }
    const c10::IValue* other = c.arg("other");
    if (other && !other->isTensor() && !other->isBool()) return;
    fail("both operands are Bool: this op has no kernel for bool tensors (convert one with .to(dtype))");
  };
}

// An index tensor: one of `dtypes`, of at most `max_dim` dims (-1: any).
Rule index_tensor(std::string_view name, std::vector<at::ScalarType> dtypes, int64_t max_dim = -1) {
  return [name, dtypes = std::move(dtypes), max_dim](const Call& c) {
    const at::Tensor* t = c.tensor(name);
    if (!t) return;
    if (std::find(dtypes.begin(), dtypes.end(), t->scalar_type()) == dtypes.end()) {
      std::vector<std::string> names;
      for (auto d : dtypes) names.push_back(dtype_name(d));
      fail(fmt::format("argument '{}' is {}: an index must be {}", name, dtype_name(t->scalar_type()),
                       fmt::join(names, " or ")));
    }
    if (max_dim >= 0 && t->dim() > max_dim) {
      fail(fmt::format("argument '{}' has {} dims (sizes {}): the index must have at most {}", name, t->dim(),
                       sizes_of(*t), max_dim));
    }
  };
}

// A list of optional index tensors (index_put): Long, Byte or Bool (Int too
// from libtorch 2).
Rule index_list(std::string_view name) {
  return [name](const Call& c) {
    for (const auto& [label, t] : c.tensors({name})) {
      const auto d = t.scalar_type();
      const bool ok = d == at::kLong || d == at::kByte || d == at::kBool || (TORCH_VERSION_MAJOR >= 2 && d == at::kInt);
      if (!ok) {
        fail(fmt::format("argument {} is {}: indices must be Long{}, Byte or Bool tensors", label, dtype_name(d),
                         TORCH_VERSION_MAJOR >= 2 ? ", Int" : ""));
      }
    }
  };
}

// A mask or a condition: Bool (Byte is still taken, deprecated).
Rule mask(std::string_view name) {
  return [name](const Call& c) {
    const at::Tensor* t = c.tensor(name);
    if (t && t->scalar_type() != at::kBool && t->scalar_type() != at::kByte) {
      fail(fmt::format("argument '{}' is {}: masks and conditions must be Bool", name, dtype_name(t->scalar_type())));
    }
  };
}

// Class-index targets (nll_loss, cross_entropy): Long (or Byte); for
// cross_entropy also class probabilities, a floating tensor of the input's
// sizes.
Rule class_target(bool probabilities_allowed) {
  return [probabilities_allowed](const Call& c) {
    const at::Tensor* target = c.tensor("target");
    const at::Tensor* input = c.tensor("self");
    if (!target) return;
    const auto d = target->scalar_type();
    if (d == at::kLong || d == at::kByte) return;
    if (probabilities_allowed && floating(d)) {
      if (input && target->sizes() == input->sizes()) return;
      fail(fmt::format("argument 'target' is {} of sizes {}: class indices must be Long, and class probabilities "
                       "must have the input's sizes {}",
                       dtype_name(d), sizes_of(*target), input ? sizes_of(*input) : std::string("?")));
    }
    fail(fmt::format("argument 'target' is {}: class indices must be Long", dtype_name(d)));
  };
}

// `src` broadcasts to the sizes of `self` (copy_ writes self's sizes).
Rule broadcasts_to(std::string_view src_name, std::string_view dst_name) {
  return [src_name, dst_name](const Call& c) {
    const at::Tensor* src = c.tensor(src_name);
    const at::Tensor* dst = c.tensor(dst_name);
    if (!src || !dst) return;
    bool ok = src->dim() <= dst->dim();
    for (int64_t i = 1; ok && i <= src->dim(); ++i) {
      const int64_t s = src->size(-i), d = dst->size(-i);
      ok = s == d || s == 1;
    }
    if (!ok) {
      fail(fmt::format("argument '{}' of sizes {} does not broadcast to the sizes {} of '{}'", src_name,
                       sizes_of(*src), sizes_of(*dst), dst_name));
    }
  };
}

// At least `n` dims (tril/triu work on the last two).
Rule min_dims(std::string_view name, int64_t n) {
  return [name, n](const Call& c) {
    const at::Tensor* t = c.tensor(name);
    if (t && t->dim() < n) {
      fail(fmt::format("argument '{}' has {} dim{} (sizes {}): this op needs at least {}", name, t->dim(),
                       t->dim() == 1 ? "" : "s", sizes_of(*t), n));
    }
  };
}

// A reduction over every element (no dim argument) of an empty tensor has
// no value: max(), min().
Rule nonempty_full_reduction() {
  return [](const Call& c) {
    if (c.has("dim") || c.has("other")) return;  // max.dim, max.other (elementwise)
    const at::Tensor* t = c.tensor("self");
    if (t && t->numel() == 0) {
      fail(fmt::format("argument 'self' has no elements (sizes {}): a reduction over all of them has no value; give "
                       "a dim",
                       sizes_of(*t)));
    }
  };
}

// An int `dim` argument that names a dim of `self` (a 0-d tensor counts as
// 1-d), for ops whose meta kernel may be missing.
Rule dim_in_range() {
  return [](const Call& c) {
    const at::Tensor* t = c.tensor("self");
    const c10::IValue* d = c.arg("dim");
    if (!t || !d || !d->isInt()) return;
    const int64_t n = std::max<int64_t>(t->dim(), 1), dim = d->toInt();
    if (dim < -n || dim >= n) {
      fail(fmt::format("dim {} out of range for argument 'self' of sizes {} (expected a dim in [{}, {}])", dim,
                       sizes_of(*t), -n, n - 1));
    }
  };
}

// kthvalue: 1 <= k <= the size of dim.
Rule k_in_range() {
  return [](const Call& c) {
    const at::Tensor* t = c.tensor("self");
    const c10::IValue* k = c.arg("k");
    const c10::IValue* d = c.arg("dim");
    if (!t || !k || !k->isInt() || !d || !d->isInt()) return;
    int64_t dim = d->toInt();
    const int64_t n = std::max<int64_t>(t->dim(), 1);
    if (dim < -n || dim >= n) fail(fmt::format("dim {} out of range for a tensor of {} dims", dim, t->dim()));
    if (dim < 0) dim += n;
    const int64_t size = t->dim() == 0 ? 1 : t->size(dim);
    if (k->toInt() < 1 || k->toInt() > size) {
      fail(fmt::format("k {} out of range for dim {} of size {} (need 1 <= k <= {})", k->toInt(), dim, size, size));
    }
  };
}

// bincount: a 1-d integer tensor.
Rule bincount_input() {
  return [](const Call& c) {
    const at::Tensor* t = c.tensor("self");
    if (!t) return;
    if (!integral(t->scalar_type(), false) || t->dim() != 1) {
      fail(fmt::format("argument 'self' is {} of sizes {}: bincount takes a 1-d integer tensor",
                       dtype_name(t->scalar_type()), sizes_of(*t)));
    }
  };
}

// layer_norm/group_norm: weight and bias in the input's dtype (libtorch 2
// also takes float32 parameters for a float16 or bfloat16 input).
Rule norm_params() {
  return [](const Call& c) {
    const at::Tensor* input = c.tensor("input");
    if (!input) return;
    for (const char* name : {"weight", "bias"}) {
      const at::Tensor* p = c.tensor(name);
      if (!p || p->scalar_type() == input->scalar_type()) continue;
      const bool mixed_ok = TORCH_VERSION_MAJOR >= 2 && p->scalar_type() == at::kFloat &&
                            (input->scalar_type() == at::kHalf || input->scalar_type() == at::kBFloat16);
      if (!mixed_ok) {
        fail(fmt::format("argument '{}' is {} where argument 'input' is {}: the parameters must have the input's "
                         "dtype",
                         name, dtype_name(p->scalar_type()), dtype_name(input->scalar_type())));
      }
    }
  };
}

// --- the table -------------------------------------------------------------------

using Table = std::unordered_map<std::string, std::vector<Rule>>;

const Table& table() {
  static const Table* t = [] {
    auto* t = new Table();
    auto add = [&](std::initializer_list<const char*> names, std::initializer_list<Rule> rules) {
      for (const char* n : names) {
        auto& v = (*t)[std::string("aten::") + n];
        v.insert(v.end(), rules.begin(), rules.end());
      }
    };
    // Matrix products and convolutions: one dtype, no bools.
    add({"matmul", "mm", "bmm", "mv", "dot", "vdot", "inner", "addmm", "addmv", "addbmm", "baddbmm", "tensordot",
         "einsum", "linear", "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
         "conv_transpose2d", "conv_transpose3d", "cross", "linalg_cross", "chain_matmul", "linalg_multi_dot"},
        {same_dtype()});
    add({"matmul", "mm", "bmm", "mv", "dot", "vdot", "inner"}, {not_bool({"self", "other", "mat2", "vec", "tensor"})});
    add({"layer_norm", "native_layer_norm", "group_norm", "native_group_norm"}, {norm_params()});
    add({"index_put", "index_put_", "_index_put_impl_"}, {same_dtype({"self", "values"}), index_list("indices")});
    // Activations, losses and other math with floating-point kernels only.
    add({"gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu", "softplus", "hardswish", "hardsigmoid",
         "log_sigmoid", "log_sigmoid_forward", "frac", "lerp", "mse_loss", "multinomial", "normal_", "exponential_"},
        {floating_input("self")});
    add({"softmax", "log_softmax", "_softmax", "_log_softmax", "randn_like"},
        {floating_input("self", /*dtype_arg=*/true)});
    add({"randn", "normal"}, {floating_dtype_arg()});
    // Integer-only ops.
    add({"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "__and__", "__or__", "__xor__", "__iand__",
         "__ior__", "__ixor__"},
        {integral_inputs(/*with_bool=*/true)});
    add({"bitwise_left_shift", "bitwise_right_shift", "__lshift__", "__rshift__", "__ilshift__", "__irshift__", "gcd",
         "lcm"},
        {integral_inputs(/*with_bool=*/false)});
    add({"abs", "absolute", "relu"}, {not_bool({"self"})});
    add({"remainder", "fmod"}, {not_all_bool()});
    // Indices, masks, targets.
    add({"index_select"}, {dim_in_range(), index_tensor("index", {at::kLong, at::kInt}, 1)});
    add({"index_fill"}, {dim_in_range(), index_tensor("index", {at::kLong})});
    add({"take"}, {index_tensor("index", {at::kLong})});
    add({"masked_fill", "masked_select", "masked_scatter"}, {mask("mask")});
    add({"where"}, {mask("condition")});
    add({"nll_loss", "nll_loss_nd", "nll_loss2d", "nll_loss_forward"}, {class_target(false)});
    add({"cross_entropy_loss"}, {class_target(true)});
    // Shapes.
    add({"copy_"}, {broadcasts_to("src", "self")});
    add({"tril", "triu"}, {min_dims("self", 2)});
    add({"max", "min"}, {nonempty_full_reduction()});
    add({"kthvalue"}, {k_in_range()});
    add({"bincount"}, {bincount_input()});
    return t;
  }();
  return *t;
}

// The rules of `name`; an in-place variant ("aten::abs_") shares those of
// its op where it has none of its own.
const std::vector<Rule>* rules_for(const std::string& name) {
  const Table& t = table();
  if (auto it = t.find(name); it != t.end()) return &it->second;
  if (name.size() > 1 && name.back() == '_' && name[name.size() - 2] != '_') {
    if (auto it = t.find(name.substr(0, name.size() - 1)); it != t.end()) return &it->second;
  }
  return nullptr;
}

void check(const c10::OperatorHandle& op, const std::vector<Rule>& rules, const torch::jit::Stack& inputs) {
  const Call call(op.schema(), inputs);
  for (const Rule& r : rules) r(call);
}

}  // namespace

void call_meta_checked(const c10::OperatorHandle& op, torch::jit::Stack& stack) {
  const std::vector<Rule>* rules = rules_for(op.schema().name());
  torch::jit::Stack inputs;
  if (rules) inputs = stack;  // the call replaces them with its outputs
  try {
    op.callBoxed(stack);
  } catch (const c10::NotImplementedError&) {
    if (rules) check(op, *rules, inputs);  // no meta kernel: the checks are all there is here
    throw;
  } catch (const c10::Error& e) {
    // Some meta kernels refuse what they cannot work out on meta tensors
    // (libtorch 1.13's one_hot even with num_classes given: "Can not infer
    // total number of classes from meta tensor"): no fault of the call, so
    // it goes as an op without a meta kernel does, and a worker tells.
    if (std::string_view(e.msg()).find("meta tensor") == std::string_view::npos) throw;
    if (rules) check(op, *rules, inputs);
    throw c10::NotImplementedError({__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                                   std::string("no usable meta kernel: ") + e.msg());
  }
  if (rules) check(op, *rules, inputs);
}

}  // namespace cox::tensor
