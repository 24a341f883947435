// The op encoder.
#include "tensor/op_encoder.hpp"

#include "common/access.hpp"
#include "common/check.hpp"
#include "wire/messages.hpp"

#include <ATen/ATen.h>

namespace cox::tensor {

using detail::Access;
using wire::ArgTag;
using TensorRef = std::shared_ptr<TensorImpl>;
using TensorRefs = std::vector<TensorRef>;

namespace {

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

// Writes the frame and the key together: every byte that changes what an
// op returns goes into the key.
struct Encoder {
  wire::Writer w;
  std::string& key;
  void tag(ArgTag t) {
    w.put(static_cast<uint8_t>(t));
    put_key(key, static_cast<uint8_t>(t));
  }
  template <class T>
  void both(T v) {
    w.put(v);
    put_key(key, v);
  }
  void int_list(const int64_t* data, size_t n) {
    both(static_cast<uint16_t>(n));
    for (size_t i = 0; i < n; ++i) w.put(data[i]);
    put_key(key, data, n * sizeof(int64_t));
  }
  void string(const std::string& s) {
    w.put_string(s);
    key += s;
    put_key(key, static_cast<uint8_t>(0));
  }
};

// A default argument, as sent.
void encode_default(Encoder& e, const OpInfo& op, size_t i) {
  const c10::IValue& v = op.defaults[i];
  if (v.isNone()) return e.tag(ArgTag::kNone);
  if (v.isBool()) {
    e.tag(ArgTag::kBool);
    e.both<uint8_t>(v.toBool());
  } else if (v.isInt()) {
    e.tag(ArgTag::kInt);
    e.both<int64_t>(v.toInt());
  } else if (v.isDouble()) {
    e.tag(ArgTag::kDouble);
    e.both<double>(v.toDouble());
  } else if (v.isIntList()) {
    e.tag(ArgTag::kIntList);
    const std::vector<int64_t> l = v.toIntVector();
    e.int_list(l.data(), l.size());
  } else if (v.isString()) {
    e.tag(ArgTag::kString);
    e.string(v.toStringRef());
  } else {
    throw InvalidArgument(fmt::format("{}: default value of argument {} ({}) is not supported", op.qualified, i,
                                      v.tagKind()));
  }
}

}  // namespace

void put_key(std::string& key, const void* p, size_t n) { key.append(static_cast<const char*>(p), n); }

void put_tensor_key(std::string& key, const Meta& m) {
  put_key(key, static_cast<uint8_t>(m.dtype));
  put_key(key, static_cast<uint8_t>(m.sizes.size()));
  put_key(key, m.sizes.data(), m.sizes.size() * sizeof(int64_t));
  put_key(key, m.strides.data(), m.strides.size() * sizeof(int64_t));
}

void encode_op(const DeviceMesh& mesh, const OpInfo& op, const Arg* args, size_t nargs, EncodedOp& out) {
  COX_CHECK_ARG(nargs <= op.nargs, "{} takes {} arguments, got {}", op.qualified, op.nargs, nargs);
  out.frame.resize(wire::kFrameHeaderBytes);
  out.key.clear();
  out.any_requires_grad = false;
  out.upstream.reset();
  Encoder e{wire::Writer(out.frame), out.key};
  e.w.put(static_cast<uint8_t>(wire::MsgType::kOp));
  e.both(op.id);
  e.w.put(static_cast<uint16_t>(op.nargs));

  const auto& engine = Access::engine(mesh);
  const auto& info = Access::info(mesh);
  auto tensor = [&](size_t i, const TensorRef& t) {
    COX_CHECK_ARG(t != nullptr, "{}: argument {} is an undefined tensor", op.qualified, i);
    COX_CHECK_ARG(Access::engine(t->mesh) == engine, "{}: a tensor of another controller used in an op on mesh {}",
                  op.qualified, mesh.shape().to_string());
    COX_CHECK_ARG(Access::info(t->mesh) == info || t->mesh.shape() == mesh.shape(),
                  "{}: a tensor on mesh {} used in an op on mesh {}; move it with to_mesh first", op.qualified,
                  t->mesh.shape().to_string(true), mesh.shape().to_string(true));
    e.w.put(t->id);
    static const Meta none;  // an error value's: its outputs will be learned (as errors)
    const Meta* m = t->meta_or_error(out.upstream);
    put_tensor_key(out.key, m ? *m : none);
    out.any_requires_grad |= t->requires_grad;
  };

  for (size_t i = 0; i < op.nargs; ++i) {
    if (i >= nargs) {
      COX_CHECK_ARG(op.has_default[i], "{}: argument {} ('{}') is required", op.qualified, i,
                    op.handle.schema().arguments()[i].name());
    }
    if (op.device_arg[i]) {
      // Devices are the worker's own: it fills them in.
      e.tag(ArgTag::kDevice);
      continue;
    }
    if (i >= nargs) {
      encode_default(e, op, i);
      continue;
    }
    std::visit(Overloaded{
                   [&](const Access::ArgNone&) { e.tag(ArgTag::kNone); },
                   [&](const TensorRef& t) {
                     e.tag(ArgTag::kTensor);
                     tensor(i, t);
                   },
                   [&](const TensorRefs& l) {
                     e.tag(ArgTag::kTensorList);
                     e.both(static_cast<uint16_t>(l.size()));
                     for (const auto& t : l) tensor(i, t);
                   },
                   [&](int64_t v) {
                     e.tag(ArgTag::kInt);
                     e.both(v);
                   },
                   [&](double v) {
                     e.tag(ArgTag::kDouble);
                     e.both(v);
                   },
                   [&](bool v) {
                     e.tag(ArgTag::kBool);
                     e.both<uint8_t>(v);
                   },
                   [&](const std::vector<int64_t>& l) {
                     e.tag(ArgTag::kIntList);
                     e.int_list(l.data(), l.size());
                   },
                   [&](at::ScalarType v) {
                     e.tag(ArgTag::kScalarType);
                     e.both(static_cast<uint8_t>(v));
                   },
                   [&](const std::string& s) {
                     e.tag(ArgTag::kString);
                     e.string(s);
                   },
               },
               Access::value(args[i]));
  }
}

torch::jit::Stack meta_stack(const OpInfo& op, const Arg* args, size_t nargs) {
  torch::jit::Stack stack;
  stack.reserve(op.nargs);
  for (size_t i = 0; i < op.nargs; ++i) {
    if (op.device_arg[i]) {
      stack.emplace_back(at::Device(at::kMeta));
    } else if (i >= nargs) {
      stack.push_back(op.defaults[i]);
    } else {
      stack.push_back(std::visit(
          Overloaded{
              [](const Access::ArgNone&) { return c10::IValue(); },
              [](const TensorRef& t) { return c10::IValue(t->meta().to_meta_tensor()); },
              [](const TensorRefs& l) {
                std::vector<at::Tensor> ts;
                ts.reserve(l.size());
                for (const auto& t : l) ts.push_back(t->meta().to_meta_tensor());
                return c10::IValue(std::move(ts));
              },
              [](const auto& v) { return c10::IValue(v); },
          },
          Access::value(args[i])));
    }
  }
  return stack;
}

std::string describe_args(const Arg* args, size_t n) {
  auto tensor = [](const TensorRef& t) {
    const Meta* m = t ? t->known() : nullptr;
    return m ? m->to_string() : std::string("Tensor");
  };
  std::vector<std::string> parts;
  for (size_t i = 0; i < n; ++i) {
    parts.push_back(std::visit(
        Overloaded{
            [](const Access::ArgNone&) { return std::string("None"); },
            tensor,
            [&](const TensorRefs& l) {
              std::vector<std::string> items;
              for (const auto& t : l) items.push_back(tensor(t));
              return fmt::format("[{}]", fmt::join(items, ", "));
            },
            [](int64_t v) { return std::to_string(v); },
            [](double v) { return fmt::format("{}", v); },
            [](bool v) { return std::string(v ? "true" : "false"); },
            [](const std::vector<int64_t>& l) { return fmt::format("[{}]", fmt::join(l, ", ")); },
            [](at::ScalarType v) { return std::string(c10::toString(v)); },
            [](const std::string& s) { return "'" + s + "'"; },
        },
        Access::value(args[i])));
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace cox::tensor
