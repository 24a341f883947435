// The Python binding: module `coxswain`. A thin layer over the C++ API with
// the same semantics; torch.Tensor values cross by DLPack (no copy on the
// way in beyond what the controller sends). The GIL is released around every
// call that may block: start-up, sync, fetch, shutdown.
#include <cox/cox.hpp>

#include <ATen/ATen.h>
#include <ATen/DLConvertor.h>

#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <optional>
#include <string>

namespace py = pybind11;
using namespace cox;

namespace {

using Ms = std::optional<std::chrono::milliseconds>;
Ms ms(std::optional<double> seconds) {
  if (!seconds) return std::nullopt;
  return std::chrono::milliseconds(static_cast<int64_t>(*seconds * 1000));
}

// --- torch.Tensor <-> at::Tensor, by DLPack ---------------------------------

py::object to_torch(const at::Tensor& t) {
  DLManagedTensor* dl = at::toDLPack(t);
  py::capsule capsule(dl, "dltensor", [](PyObject* c) {
    // Not consumed by torch: free it here.
    if (PyCapsule_IsValid(c, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      if (m && m->deleter) m->deleter(m);
    }
  });
  return py::module_::import("torch.utils.dlpack").attr("from_dlpack")(capsule);
}

at::Tensor from_torch(const py::object& t) {
  py::object capsule = py::module_::import("torch.utils.dlpack").attr("to_dlpack")(t.attr("contiguous")());
  auto* dl = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (!dl) throw py::error_already_set();
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");  // ours now
  return at::fromDLPack(dl).clone();  // owns its memory apart from Python's tensor
}

// --- dtypes: torch.dtype <-> at::ScalarType ----------------------------------

at::ScalarType to_scalar_type(const py::object& dtype) {
  const std::string name = py::str(dtype);  // "torch.float32"
  static const std::pair<const char*, at::ScalarType> table[] = {
      {"torch.float32", at::kFloat}, {"torch.float64", at::kDouble}, {"torch.float16", at::kHalf},
      {"torch.bfloat16", at::kBFloat16}, {"torch.int64", at::kLong},  {"torch.int32", at::kInt},
      {"torch.int16", at::kShort},   {"torch.int8", at::kChar},      {"torch.uint8", at::kByte},
      {"torch.bool", at::kBool}};
  for (auto& [n, t] : table) {
    if (name == n) return t;
  }
  throw InvalidArgument("unsupported dtype " + name);
}

py::object to_torch_dtype(at::ScalarType t) {
  const std::string name = c10::toString(t);  // "Float", "Long"...
  static const std::pair<const char*, const char*> table[] = {
      {"Float", "float32"}, {"Double", "float64"}, {"Half", "float16"}, {"BFloat16", "bfloat16"},
      {"Long", "int64"},    {"Int", "int32"},      {"Short", "int16"},  {"Char", "int8"},
      {"Byte", "uint8"},    {"Bool", "bool"}};
  for (auto& [n, torch_name] : table) {
    if (name == n) return py::module_::import("torch").attr(torch_name);
  }
  return py::str(name);
}

TensorOptions options(const py::object& dtype, bool requires_grad) {
  TensorOptions o;
  if (!dtype.is_none()) o.dtype = to_scalar_type(dtype);
  o.requires_grad = requires_grad;
  return o;
}

// --- op arguments ------------------------------------------------------------

Arg to_arg(const py::handle& v) {
  if (v.is_none()) return Arg(std::nullopt);
  if (py::isinstance<Tensor>(v)) return Arg(v.cast<Tensor>());
  if (py::isinstance<py::bool_>(v)) return Arg(v.cast<bool>());
  if (py::isinstance<py::int_>(v)) return Arg(v.cast<int64_t>());
  if (py::isinstance<py::float_>(v)) return Arg(v.cast<double>());
  if (py::isinstance<py::str>(v)) return Arg(v.cast<std::string>());
  if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
    py::sequence s = py::reinterpret_borrow<py::sequence>(v);
    if (s.size() > 0 && py::isinstance<Tensor>(s[0])) return Arg(v.cast<std::vector<Tensor>>());
    return Arg(v.cast<std::vector<int64_t>>());
  }
  if (py::str(py::type::of(v)).cast<std::string>().find("torch.dtype") != std::string::npos) {
    return Arg(to_scalar_type(py::reinterpret_borrow<py::object>(v)));
  }
  throw InvalidArgument("call_op: cannot pass a " + py::str(py::type::of(v)).cast<std::string>() +
                        " as an op argument");
}

NamedCoord named_coord(const py::dict& d) {
  std::vector<NamedCoord::Entry> e;
  for (auto [k, v] : d) e.emplace_back(k.cast<std::string>(), v.cast<int64_t>());
  return NamedCoord(std::move(e));
}

std::vector<std::pair<std::string, int64_t>> dims_of(const py::object& dims) {
  std::vector<std::pair<std::string, int64_t>> out;
  if (py::isinstance<py::dict>(dims)) {
    for (auto [k, v] : dims.cast<py::dict>()) out.emplace_back(k.cast<std::string>(), v.cast<int64_t>());
  } else {
    out = dims.cast<std::vector<std::pair<std::string, int64_t>>>();
  }
  return out;
}

at::Tensor fetch(const Tensor& t, const py::object& coord, std::optional<double> timeout) {
  TensorFuture f = py::isinstance<py::dict>(coord) ? t.fetch(named_coord(coord.cast<py::dict>()))
                                                   : t.fetch(coord.cast<Coord>());
  py::gil_scoped_release release;
  return f.get(ms(timeout));
}

std::string fmt_sizes(const std::vector<int64_t>& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out;
}

// A no-grad region as a context manager.
struct NoGrad {
  explicit NoGrad(DeviceMesh m) : mesh(std::move(m)) {}
  DeviceMesh mesh;
  std::unique_ptr<NoGradGuard> guard;
};

}  // namespace

PYBIND11_MODULE(coxswain, m) {
  m.doc() = "Coxswain: one controller drives a mesh of worker processes (see the README).";

  // Exceptions: the C++ hierarchy, under cox.Error (a RuntimeError).
  static py::exception<Error> error(m, "Error", PyExc_RuntimeError);
  static py::exception<InvalidArgument> invalid(m, "InvalidArgument", error.ptr());
  static py::exception<WorkerLost> lost(m, "WorkerLost", error.ptr());
  static py::exception<RemoteError> remote(m, "RemoteError", error.ptr());
  static py::exception<Timeout> timeout(m, "Timeout", error.ptr());
  static py::exception<ProtocolError> protocol(m, "ProtocolError", error.ptr());
  static py::exception<InternalError> internal(m, "InternalError", error.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      invalid(e.what());
    } catch (const WorkerLost& e) {
      lost(e.what());
    } catch (const RemoteError& e) {
      remote(e.what());
    } catch (const Timeout& e) {
      timeout(e.what());
    } catch (const ProtocolError& e) {
      protocol(e.what());
    } catch (const InternalError& e) {
      internal(e.what());
    } catch (const Error& e) {
      error(e.what());
    }
  });

  py::enum_<Reduce>(m, "Reduce")
      .value("Sum", Reduce::Sum)
      .value("Avg", Reduce::Avg)
      .value("Min", Reduce::Min)
      .value("Max", Reduce::Max)
      .value("Product", Reduce::Product);

  py::class_<Controller>(m, "Controller")
      .def_static(
          "local",
          [](int workers, const std::string& worker_path, double heartbeat_timeout, double collective_timeout,
             const std::string& device, const std::vector<int>& gpus) {
            ControllerOptions o;
            o.workers = workers;
            o.worker_path = worker_path;
            o.device = device;
            o.gpus = gpus;
            o.heartbeat_timeout = std::chrono::milliseconds(static_cast<int64_t>(heartbeat_timeout * 1000));
            o.collective_timeout = std::chrono::milliseconds(static_cast<int64_t>(collective_timeout * 1000));
            py::gil_scoped_release release;
            return Controller::local(o);
          },
          py::arg("workers") = 0, py::arg("worker_path") = "", py::arg("heartbeat_timeout") = 10.0,
          py::arg("collective_timeout") = 600.0, py::arg("device") = "auto", py::arg("gpus") = std::vector<int>{})
      .def_static(
          "attach",
          [](int workers, uint16_t port, const std::string& token, const std::string& host, double startup_timeout) {
            ControllerOptions o;
            o.workers = workers;
            o.listen_host = host;
            o.listen_port = port;
            o.token = token;
            o.startup_timeout = std::chrono::milliseconds(static_cast<int64_t>(startup_timeout * 1000));
            py::gil_scoped_release release;
            return Controller::attach(o);
          },
          py::arg("workers"), py::arg("port"), py::arg("token"), py::arg("host") = "127.0.0.1",
          py::arg("startup_timeout") = 30.0)
      .def_property_readonly("size", &Controller::size)
      .def("mesh", [](Controller& c, const py::object& dims) { return c.mesh(dims_of(dims)); }, py::arg("dims"))
      .def(
          "sync",
          [](Controller& c, std::optional<double> timeout) {
            py::gil_scoped_release release;
            c.sync(ms(timeout));
          },
          py::arg("timeout") = py::none())
      .def("shutdown",
           [](Controller& c) {
             py::gil_scoped_release release;
             c.shutdown();
           })
      .def("worker_pid", &Controller::worker_pid)
      .def("device", &Controller::device, py::arg("rank"))
      .def("lost_workers", &Controller::lost_workers)
      .def("__enter__", [](Controller& c) -> Controller& { return c; }, py::return_value_policy::reference)
      .def("__exit__", [](Controller& c, py::args) {
        py::gil_scoped_release release;
        c.shutdown();
      });

  py::class_<DeviceMesh>(m, "DeviceMesh")
      .def_property_readonly("names", [](const DeviceMesh& d) { return d.shape().names(); })
      .def_property_readonly("sizes", [](const DeviceMesh& d) { return d.shape().sizes(); })
      .def_property_readonly("ranks", &DeviceMesh::ranks)
      .def("size", [](const DeviceMesh& d, std::optional<std::string> dim) { return dim ? d.size(*dim) : d.size(); },
           py::arg("dim") = py::none())
      .def("slice", py::overload_cast<std::string_view, int64_t>(&DeviceMesh::slice, py::const_), py::arg("dim"),
           py::arg("index"))
      .def("slice", py::overload_cast<std::string_view, int64_t, int64_t, int64_t>(&DeviceMesh::slice, py::const_),
           py::arg("dim"), py::arg("begin"), py::arg("end"), py::arg("step") = 1)
      .def("split", &DeviceMesh::split, py::arg("dim"), py::arg("names"), py::arg("sizes"))
      .def("rename", &DeviceMesh::rename, py::arg("old"), py::arg("new"))
      .def("flatten", &DeviceMesh::flatten, py::arg("name"))
      .def("transpose", &DeviceMesh::transpose, py::arg("a"), py::arg("b"))
      .def("permute", &DeviceMesh::permute, py::arg("order"))
      .def("groups", &DeviceMesh::groups, py::arg("dims") = std::vector<std::string>{})
      .def(
          "sync",
          [](const DeviceMesh& d, std::optional<double> timeout) {
            py::gil_scoped_release release;
            d.sync(ms(timeout));
          },
          py::arg("timeout") = py::none())
      .def("manual_seed", &DeviceMesh::manual_seed, py::arg("seed"), py::arg("per_rank") = false)
      .def("__eq__", [](const DeviceMesh& a, const DeviceMesh& b) { return a == b; })
      .def("__repr__", [](const DeviceMesh& d) { return "DeviceMesh(" + d.shape().to_string() + ")"; });

  py::class_<Tensor>(m, "Tensor")
      .def_property_readonly("shape", &Tensor::sizes)
      .def_property_readonly("dtype", [](const Tensor& t) { return to_torch_dtype(t.dtype()); })
      .def_property_readonly("requires_grad", &Tensor::requires_grad)
      .def_property_readonly("mesh", &Tensor::mesh)
      .def("dim", &Tensor::dim)
      .def("numel", &Tensor::numel)
      .def("fetch", [](const Tensor& t, const py::object& coord, std::optional<double> timeout) {
             return to_torch(fetch(t, coord, timeout));
           },
           py::arg("coord"), py::arg("timeout") = py::none())
      .def("fetch_all",
           [](const Tensor& t, std::optional<double> timeout) {
             std::vector<at::Tensor> all;
             {
               py::gil_scoped_release release;
               all = t.fetch_all(ms(timeout));
             }
             py::list out;
             for (auto& a : all) out.append(to_torch(a));
             return out;
           },
           py::arg("timeout") = py::none())
      .def("item",
           [](const Tensor& t) {
             at::Tensor v;
             {
               py::gil_scoped_release release;
               v = t.fetch(Coord(t.mesh().shape().ndim(), 0)).get();
             }
             return to_torch(v).attr("item")();
           })
      .def("backward", [](const Tensor& t, std::optional<Tensor> grad) { t.backward(grad ? *grad : Tensor()); },
           py::arg("grad") = py::none())
      .def("grad", &Tensor::grad)
      .def("requires_grad_", [](Tensor& t, bool on) { return t.requires_grad_(on); }, py::arg("enabled") = true)
      .def("detach", &Tensor::detach)
      .def("clone", &Tensor::clone)
      .def("contiguous", &Tensor::contiguous)
      .def("to_mesh", &Tensor::to_mesh, py::arg("mesh"))
      .def("to", [](const Tensor& t, const py::object& dtype) { return t.to(to_scalar_type(dtype)); })
      .def("matmul", &Tensor::matmul)
      .def("__matmul__", &Tensor::matmul)
      .def("__add__", [](const Tensor& a, const Tensor& b) { return a + b; })
      .def("__add__", [](const Tensor& a, double b) { return a + b; })
      .def("__radd__", [](const Tensor& a, double b) { return a + b; })
      .def("__sub__", [](const Tensor& a, const Tensor& b) { return a - b; })
      .def("__sub__", [](const Tensor& a, double b) { return a - b; })
      .def("__rsub__", [](const Tensor& a, double b) { return (-a) + b; })
      .def("__mul__", [](const Tensor& a, const Tensor& b) { return a * b; })
      .def("__mul__", [](const Tensor& a, double b) { return a * b; })
      .def("__rmul__", [](const Tensor& a, double b) { return a * b; })
      .def("__truediv__", [](const Tensor& a, const Tensor& b) { return a / b; })
      .def("__truediv__", [](const Tensor& a, double b) { return a / b; })
      .def("__neg__", [](const Tensor& a) { return -a; })
      .def("pow", &Tensor::pow)
      .def("exp", &Tensor::exp)
      .def("log", &Tensor::log)
      .def("sqrt", &Tensor::sqrt)
      .def("abs", &Tensor::abs)
      .def("sum", [](const Tensor& t, std::optional<std::vector<int64_t>> dims, bool keepdim) {
             return dims ? t.sum(*dims, keepdim) : t.sum();
           },
           py::arg("dims") = py::none(), py::arg("keepdim") = false)
      .def("mean", [](const Tensor& t, std::optional<std::vector<int64_t>> dims, bool keepdim) {
             return dims ? t.mean(*dims, keepdim) : t.mean();
           },
           py::arg("dims") = py::none(), py::arg("keepdim") = false)
      .def("argmax", &Tensor::argmax, py::arg("dim"), py::arg("keepdim") = false)
      .def("max", [](const Tensor& t, std::optional<int64_t> dim, bool keepdim) -> py::object {
             if (!dim) return py::cast(t.max());
             auto [values, indices] = t.max(*dim, keepdim);
             return py::make_tuple(values, indices);
           },
           py::arg("dim") = py::none(), py::arg("keepdim") = false)
      .def("permute", &Tensor::permute, py::arg("dims"))
      .def("select", &Tensor::select, py::arg("dim"), py::arg("index"))
      .def("slice", &Tensor::slice, py::arg("dim"), py::arg("start"), py::arg("end"), py::arg("step") = 1)
      .def("index_select", &Tensor::index_select, py::arg("dim"), py::arg("index"))
      .def("view", &Tensor::view)
      .def("reshape", &Tensor::reshape)
      .def("transpose", &Tensor::transpose)
      .def("t", &Tensor::t)
      .def("narrow", &Tensor::narrow)
      .def("unsqueeze", &Tensor::unsqueeze)
      .def("squeeze", &Tensor::squeeze)
      .def("add_", [](Tensor& t, const Tensor& o, double alpha) { return t.add_(o, alpha); }, py::arg("other"),
           py::arg("alpha") = 1.0)
      .def("sub_", [](Tensor& t, const Tensor& o, double alpha) { return t.sub_(o, alpha); }, py::arg("other"),
           py::arg("alpha") = 1.0)
      .def("mul_", [](Tensor& t, double s) { return t.mul_(s); })
      .def("zero_", [](Tensor& t) { return t.zero_(); })
      .def("fill_", [](Tensor& t, double v) { return t.fill_(v); })
      .def("copy_", [](Tensor& t, const Tensor& s) { return t.copy_(s); })
      .def("__repr__", [](const Tensor& t) -> std::string {
        if (!t.defined()) return "Tensor(undefined)";
        return "Tensor(" + t.mesh().shape().to_string() + ", " + c10::toString(t.dtype()) + "[" +
               fmt_sizes(t.sizes()) + "])";
      });

  // Creation.
  auto creator = [&](const char* name, Tensor (*f)(const DeviceMesh&, std::vector<int64_t>, TensorOptions)) {
    m.def(
        name,
        [f](const DeviceMesh& mesh, std::vector<int64_t> sizes, const py::object& dtype, bool requires_grad) {
          return f(mesh, std::move(sizes), options(dtype, requires_grad));
        },
        py::arg("mesh"), py::arg("sizes"), py::arg("dtype") = py::none(), py::arg("requires_grad") = false);
  };
  creator("zeros", &zeros);
  creator("ones", &ones);
  creator("empty", &empty);
  creator("rand", &rand);
  creator("randn", &randn);
  m.def("full", [](const DeviceMesh& mesh, std::vector<int64_t> sizes, double v, const py::object& dtype,
                   bool requires_grad) { return full(mesh, std::move(sizes), v, options(dtype, requires_grad)); },
        py::arg("mesh"), py::arg("sizes"), py::arg("value"), py::arg("dtype") = py::none(),
        py::arg("requires_grad") = false);
  m.def("arange", [](const DeviceMesh& mesh, int64_t end, const py::object& dtype) {
          return arange(mesh, end, options(dtype, false));
        },
        py::arg("mesh"), py::arg("end"), py::arg("dtype") = py::none());
  m.def("coordinate", &coordinate, py::arg("mesh"), py::arg("dim"));
  m.def("global_rank", &global_rank, py::arg("mesh"));
  m.def("mesh_rank", &mesh_rank, py::arg("mesh"));
  m.def("from_local", [](const DeviceMesh& mesh, const py::object& t, bool requires_grad) {
          return from_local(mesh, from_torch(t), requires_grad);
        },
        py::arg("mesh"), py::arg("tensor"), py::arg("requires_grad") = false);
  m.def("scatter", [](const DeviceMesh& mesh, const py::object& t, int64_t tensor_dim, const std::string& mesh_dim) {
          return scatter(mesh, from_torch(t), tensor_dim, mesh_dim);
        },
        py::arg("mesh"), py::arg("tensor"), py::arg("tensor_dim"), py::arg("mesh_dim"));

  // Functions.
  m.def("relu", &relu);
  m.def("gelu", &gelu);
  m.def("silu", &silu);
  m.def("tanh", &cox::tanh);
  m.def("sigmoid", &sigmoid);
  m.def("softmax", &softmax, py::arg("x"), py::arg("dim"));
  m.def("log_softmax", &log_softmax, py::arg("x"), py::arg("dim"));
  m.def("cat", &cat, py::arg("tensors"), py::arg("dim") = 0);
  m.def("stack", &stack, py::arg("tensors"), py::arg("dim") = 0);
  m.def("linear", [](const Tensor& x, const Tensor& w, std::optional<Tensor> b) { return linear(x, w, b ? *b : Tensor()); },
        py::arg("x"), py::arg("weight"), py::arg("bias") = py::none());
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("target"));
  m.def("nll_loss", &nll_loss, py::arg("log_probs"), py::arg("target"));
  m.def("embedding", &embedding, py::arg("weight"), py::arg("indices"));
  m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("normalized_shape"), py::arg("weight"), py::arg("bias"),
        py::arg("eps") = 1e-5);
  m.def("dropout", &dropout, py::arg("x"), py::arg("p"), py::arg("train"));
  m.def("mse_loss", &mse_loss, py::arg("x"), py::arg("target"));
  m.def(
      "call_op",
      [](const std::string& name, const std::string& overload, const py::list& args, std::optional<DeviceMesh> mesh) {
        std::vector<Arg> a;
        for (auto v : args) a.push_back(to_arg(v));
        return mesh ? call_op(*mesh, name, overload, a) : call_op(name, overload, a);
      },
      py::arg("name"), py::arg("overload"), py::arg("args"), py::arg("mesh") = py::none());

  // Collectives.
  m.def("all_reduce", &all_reduce, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("op") = Reduce::Sum);
  m.def("all_reduce_", [](Tensor& t, const Dims& dims, Reduce op) { return all_reduce_(t, dims, op); },
        py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("op") = Reduce::Sum);
  m.def("reduce_scatter", &reduce_scatter, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("op") = Reduce::Sum,
        py::arg("dim") = 0);
  m.def("all_gather", &all_gather, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("dim") = 0);
  m.def("all_to_all", &all_to_all, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("split_dim") = 0,
        py::arg("concat_dim") = 0);
  m.def("broadcast", &broadcast, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("root") = 0);
  m.def("barrier", &barrier, py::arg("mesh"), py::arg("dims") = Dims{});
  m.def("send_recv", &send_recv, py::arg("tensor"), py::arg("mesh"), py::arg("sources"));

  // Fused optimizer steps.
  m.def(
      "fused_adamw_",
      [](const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
         const std::vector<Tensor>& exp_avg_sq, double lr, double beta1, double beta2, double eps,
         double weight_decay, int64_t step) {
        fused_adamw_(params, grads, exp_avg, exp_avg_sq, {lr, beta1, beta2, eps, weight_decay}, step);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::kw_only(), py::arg("lr"),
      py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.01,
      py::arg("step"));
  m.def(
      "fused_sgd_momentum_",
      [](const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& buffers,
         double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool first) {
        fused_sgd_momentum_(params, grads, buffers, {lr, momentum, dampening, weight_decay, nesterov}, first);
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::kw_only(), py::arg("lr"),
      py::arg("momentum") = 0.9, py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0,
      py::arg("nesterov") = false, py::arg("first"));
  m.def("flatten", &flatten, py::arg("tensors"));
  m.def("unflatten_", &unflatten_, py::arg("flat"), py::arg("tensors"), py::arg("scale") = 1.0);

  py::class_<NoGrad>(m, "no_grad")
      .def(py::init<DeviceMesh>(), py::arg("mesh"))
      .def("__enter__", [](NoGrad& g) { g.guard = std::make_unique<NoGradGuard>(g.mesh); })
      .def("__exit__", [](NoGrad& g, py::args) { g.guard.reset(); });
}
