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

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

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

// --- ControllerOptions -------------------------------------------------------

std::string describe(const py::handle& v) {
  return py::repr(v).cast<std::string>() + " (" + py::str(py::type::of(v).attr("__name__")).cast<std::string>() + ")";
}

[[noreturn]] void bad_option(const char* field, const char* expected, const py::handle& v) {
  throw InvalidArgument(std::string("ControllerOptions.") + field + ": expected " + expected + ", got " + describe(v));
}

int64_t integer_option(const char* field, const py::handle& v, int64_t lo, int64_t hi) {
  if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v)) bad_option(field, "an int", v);
  int64_t x = 0;
  try {
    x = v.cast<int64_t>();
  } catch (const py::cast_error&) {  // beyond int64
    throw InvalidArgument(std::string("ControllerOptions.") + field + ": " + py::repr(v).cast<std::string>() +
                          " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  if (x < lo || x > hi) {
    throw InvalidArgument(std::string("ControllerOptions.") + field + ": " + std::to_string(x) +
                          " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return x;
}

// Durations cross as float seconds, to the millisecond.
std::chrono::milliseconds seconds_option(const char* field, const py::handle& v) {
  if ((!py::isinstance<py::float_>(v) && !py::isinstance<py::int_>(v)) || py::isinstance<py::bool_>(v)) {
    bad_option(field, "a number of seconds", v);
  }
  const double s = v.cast<double>();
  if (!std::isfinite(s) || s < 0 || s * 1000 > static_cast<double>(std::numeric_limits<int64_t>::max() / 2)) {
    throw InvalidArgument(std::string("ControllerOptions.") + field + ": " + py::repr(v).cast<std::string>() +
                          " is not a finite, non-negative number of seconds");
  }
  return std::chrono::milliseconds(std::llround(s * 1000));
}

std::string string_option(const char* field, const py::handle& v) {
  if (!py::isinstance<py::str>(v)) bad_option(field, "a str", v);
  return v.cast<std::string>();
}

// A Python callable held by C++ (in ControllerOptions) and called from other
// threads: each call takes the GIL, and so does dropping the last reference.
struct PyCallable {
  explicit PyCallable(py::function f)
      : fn(new py::function(std::move(f)), [](py::function* p) {
          if (!Py_IsInitialized()) return;  // at exit: leave it to the dead interpreter
          py::gil_scoped_acquire gil;
          delete p;
        }) {}
  std::shared_ptr<py::function> fn;
};

// on_listening: on the thread that called attach() (which released the GIL);
// an exception fails attach() with it.
struct OnListening : PyCallable {
  using PyCallable::PyCallable;
  void operator()(const AttachInfo& info) const {
    py::gil_scoped_acquire gil;
    (*fn)(info);
  }
};

// worker_env: on the controller's I/O thread while local() waits.
struct WorkerEnv : PyCallable {
  using PyCallable::PyCallable;
  std::vector<std::pair<std::string, std::string>> operator()(int rank) const {
    py::gil_scoped_acquire gil;
    py::object env = (*fn)(rank);
    try {
      if (py::isinstance<py::dict>(env)) {
        std::vector<std::pair<std::string, std::string>> out;
        for (auto [k, v] : env.cast<py::dict>()) out.emplace_back(k.cast<std::string>(), v.cast<std::string>());
        return out;
      }
      return env.cast<std::vector<std::pair<std::string, std::string>>>();
    } catch (const py::cast_error&) {
      throw InvalidArgument("ControllerOptions.worker_env(" + std::to_string(rank) +
                            ") must return a dict or a list of (name, value) str pairs, got " + describe(env));
    }
  }
};

// output_sink: on the controller's I/O thread. An exception cannot go
// anywhere useful from there: it is reported as unraisable (to stderr).
struct OutputCallback : PyCallable {
  using PyCallable::PyCallable;
  void operator()(int rank, OutputStream stream, std::string_view line) const {
    py::gil_scoped_acquire gil;
    try {
      (*fn)(rank, stream, py::str(line.data(), line.size()));
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("coxswain ControllerOptions.output_sink");
    }
  }
};

template <class Callback, class Function>
py::object callback_get(const Function& f) {
  if (const auto* c = f.template target<Callback>()) return *c->fn;
  return py::none();  // unset (or set from C++)
}

template <class Callback, class Function>
void callback_set(const char* field, Function& f, const py::handle& v) {
  if (v.is_none()) {
    f = nullptr;
    return;
  }
  if (!PyCallable_Check(v.ptr())) bad_option(field, "a callable or None", v);
  f = Callback(py::reinterpret_borrow<py::function>(v));
}

// Every field of ControllerOptions, once: the class's attributes, the
// keywords of ControllerOptions(), Controller.local() and .attach(), and the
// repr. Defaults come from a default-constructed ControllerOptions.
struct OptionField {
  const char* name;
  std::function<py::object(const ControllerOptions&)> get;
  std::function<void(ControllerOptions&, const py::handle&)> set;
};

template <class Int>
OptionField int_field(const char* name, Int ControllerOptions::*p) {
  return {name, [p](const ControllerOptions& o) { return py::object(py::int_(o.*p)); },
          [p, name](ControllerOptions& o, const py::handle& v) {
            const int64_t hi = std::numeric_limits<Int>::max() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                                   ? std::numeric_limits<int64_t>::max()
                                   : static_cast<int64_t>(std::numeric_limits<Int>::max());
            const int64_t lo = std::is_signed_v<Int> ? static_cast<int64_t>(std::numeric_limits<Int>::min()) : 0;
            o.*p = static_cast<Int>(integer_option(name, v, lo, hi));
          }};
}

OptionField seconds_field(const char* name, std::chrono::milliseconds ControllerOptions::*p) {
  return {name, [p](const ControllerOptions& o) { return py::object(py::float_((o.*p).count() / 1000.0)); },
          [p, name](ControllerOptions& o, const py::handle& v) { o.*p = seconds_option(name, v); }};
}

OptionField string_field(const char* name, std::string ControllerOptions::*p) {
  return {name, [p](const ControllerOptions& o) { return py::object(py::str(o.*p)); },
          [p, name](ControllerOptions& o, const py::handle& v) { o.*p = string_option(name, v); }};
}

template <class Callback, class Function>
OptionField callback_field(const char* name, Function ControllerOptions::*p) {
  return {name, [p](const ControllerOptions& o) { return callback_get<Callback>(o.*p); },
          [p, name](ControllerOptions& o, const py::handle& v) { callback_set<Callback>(name, o.*p, v); }};
}

const std::vector<OptionField>& option_fields() {
  static const std::vector<OptionField> fields = {
      int_field("workers", &ControllerOptions::workers),
      string_field("device", &ControllerOptions::device),
      {"gpus", [](const ControllerOptions& o) { return py::object(py::cast(o.gpus)); },
       [](ControllerOptions& o, const py::handle& v) {
         if (!py::isinstance<py::sequence>(v) || py::isinstance<py::str>(v)) bad_option("gpus", "a list of ints", v);
         std::vector<int> gpus;
         for (auto g : py::reinterpret_borrow<py::sequence>(v)) {
           gpus.push_back(static_cast<int>(integer_option("gpus", g, 0, std::numeric_limits<int>::max())));
         }
         o.gpus = std::move(gpus);
       }},
      string_field("worker_path", &ControllerOptions::worker_path),
      callback_field<WorkerEnv>("worker_env", &ControllerOptions::worker_env),
      string_field("listen_host", &ControllerOptions::listen_host),
      int_field("listen_port", &ControllerOptions::listen_port),
      string_field("token", &ControllerOptions::token),
      callback_field<OnListening>("on_listening", &ControllerOptions::on_listening),
      seconds_field("startup_timeout", &ControllerOptions::startup_timeout),
      seconds_field("shutdown_timeout", &ControllerOptions::shutdown_timeout),
      seconds_field("heartbeat_interval", &ControllerOptions::heartbeat_interval),
      seconds_field("heartbeat_timeout", &ControllerOptions::heartbeat_timeout),
      int_field("max_frame_bytes", &ControllerOptions::max_frame_bytes),
      int_field("send_buffer_bytes", &ControllerOptions::send_buffer_bytes),
      seconds_field("send_timeout", &ControllerOptions::send_timeout),
      seconds_field("collective_timeout", &ControllerOptions::collective_timeout),
      seconds_field("op_timeout", &ControllerOptions::op_timeout),
      {"op_timeout_loses_worker",
       [](const ControllerOptions& o) { return py::object(py::bool_(o.op_timeout_loses_worker)); },
       [](ControllerOptions& o, const py::handle& v) {
         if (!py::isinstance<py::bool_>(v)) bad_option("op_timeout_loses_worker", "a bool", v);
         o.op_timeout_loses_worker = v.cast<bool>();
       }},
      int_field("stderr_lines_kept", &ControllerOptions::stderr_lines_kept),
      callback_field<OutputCallback>("output_sink", &ControllerOptions::output_sink),
  };
  return fields;
}

void apply_options(ControllerOptions& o, const py::kwargs& kwargs) {
  for (auto [key, value] : kwargs) {
    const std::string name = key.cast<std::string>();
    const auto& fields = option_fields();
    auto f = std::find_if(fields.begin(), fields.end(), [&](const OptionField& x) { return name == x.name; });
    if (f == fields.end()) throw InvalidArgument("ControllerOptions has no field '" + name + "'");
    f->set(o, value);
  }
}

ControllerOptions make_options(const std::optional<ControllerOptions>& base, const py::kwargs& kwargs) {
  ControllerOptions o = base ? *base : ControllerOptions{};
  apply_options(o, kwargs);
  return o;
}

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

// A no-grad region as a context manager.
struct NoGrad {
  explicit NoGrad(DeviceMesh m) : mesh(std::move(m)) {}
  DeviceMesh mesh;
  std::unique_ptr<NoGradGuard> guard;
};

// The typed ops, generated from the op table src/ops/ops.def.
#include "generated/python_ops.inc"

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
  // The fields' class-level values, for an exception raised from Python.
  lost.attr("rank") = -1;
  lost.attr("reason") = "";
  lost.attr("last_output") = py::list();
  remote.attr("rank") = -1;
  remote.attr("op") = "";
  remote.attr("message") = "";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      invalid(e.what());
    } catch (const WorkerLost& e) {
      // With the C++ exception's fields as attributes.
      py::object exc = py::handle(lost.ptr())(e.what());
      exc.attr("rank") = e.rank();
      exc.attr("reason") = e.reason();
      exc.attr("last_output") = py::cast(e.last_output());
      PyErr_SetObject(lost.ptr(), exc.ptr());
    } catch (const RemoteError& e) {
      py::object exc = py::handle(remote.ptr())(e.what());
      exc.attr("rank") = e.rank();
      exc.attr("op") = e.op();
      exc.attr("message") = e.message();
      PyErr_SetObject(remote.ptr(), exc.ptr());
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

  py::enum_<OutputStream>(m, "OutputStream")
      .value("Stdout", OutputStream::kStdout)
      .value("Stderr", OutputStream::kStderr);

  py::class_<AttachInfo>(m, "AttachInfo")
      .def(py::init<>())
      .def_readwrite("host", &AttachInfo::host)
      .def_readwrite("port", &AttachInfo::port)
      .def_readwrite("token", &AttachInfo::token)
      .def("__repr__", [](const AttachInfo& i) {  // the token is a secret: not shown
        return "AttachInfo(host='" + i.host + "', port=" + std::to_string(i.port) + ")";
      });

  py::class_<WorkerStatus> status(m, "WorkerStatus");
  py::enum_<WorkerStatus::State>(status, "State")
      .value("Idle", WorkerStatus::State::kIdle)
      .value("Busy", WorkerStatus::State::kBusy)
      .value("Lost", WorkerStatus::State::kLost)
      .value("Exited", WorkerStatus::State::kExited);
  status.def(py::init<>())
      .def_readwrite("rank", &WorkerStatus::rank)
      .def_readwrite("state", &WorkerStatus::state)
      .def_readwrite("device", &WorkerStatus::device)
      .def_readwrite("pid", &WorkerStatus::pid)
      .def_readwrite("doing", &WorkerStatus::doing)
      .def_property(
          "busy_for", [](const WorkerStatus& w) { return seconds(w.busy_for); },
          [](WorkerStatus& w, double s) { w.busy_for = std::chrono::milliseconds(std::llround(s * 1000)); })
      .def_readwrite("started", &WorkerStatus::started)
      .def_property(
          "last_heard", [](const WorkerStatus& w) { return seconds(w.last_heard); },
          [](WorkerStatus& w, double s) { w.last_heard = std::chrono::milliseconds(std::llround(s * 1000)); })
      .def_readwrite("pending_bytes", &WorkerStatus::pending_bytes)
      .def_readwrite("lost", &WorkerStatus::lost)
      .def("__str__", [](const WorkerStatus& w) { return to_string(w); })
      .def("__repr__", [](const WorkerStatus& w) { return "<WorkerStatus " + to_string(w) + ">"; });

  py::class_<ControllerOptions> opts(m, "ControllerOptions");
  opts.def(py::init([](const py::kwargs& kwargs) { return make_options(std::nullopt, kwargs); }))
      .def("__repr__", [](const ControllerOptions& o) {
        std::string out = "ControllerOptions(";
        for (const auto& f : option_fields()) {
          out += std::string(&f == &option_fields().front() ? "" : ", ") + f.name + "=" +
                 (std::string_view(f.name) == "token" && !o.token.empty() ? "'...'"
                                                                           : py::repr(f.get(o)).cast<std::string>());
        }
        return out + ")";
      });
  for (const auto& f : option_fields()) {
    opts.def_property(
        f.name, [&f](const ControllerOptions& o) { return f.get(o); },
        [&f](ControllerOptions& o, const py::object& v) { f.set(o, v); });
  }

  py::class_<Controller>(m, "Controller")
      .def_static(
          "local",
          [](const std::optional<ControllerOptions>& options, const py::kwargs& kwargs) {
            ControllerOptions o = make_options(options, kwargs);
            py::gil_scoped_release release;
            return Controller::local(std::move(o));
          },
          py::arg("options") = py::none())
      .def_static(
          "attach",
          [](const std::optional<ControllerOptions>& options, const py::kwargs& kwargs) {
            ControllerOptions o = make_options(options, kwargs);
            py::gil_scoped_release release;
            return Controller::attach(std::move(o));
          },
          py::arg("options") = py::none())
      .def_property_readonly("size", &Controller::size)
      .def("mesh", [](Controller& c, const py::object& dims) { return c.mesh(dims_of(dims)); }, py::arg("dims"))
      .def(
          "sync",
          [](Controller& c, std::optional<double> timeout) {
            py::gil_scoped_release release;
            c.sync(ms(timeout));
          },
          py::arg("timeout") = py::none())
      .def(
          "ping",
          [](Controller& c, int rank, std::optional<double> timeout) {
            py::gil_scoped_release release;
            return seconds(c.ping(rank, ms(timeout)));
          },
          py::arg("rank"), py::arg("timeout") = py::none())
      .def("shutdown",
           [](Controller& c) {
             py::gil_scoped_release release;
             c.shutdown();
           })
      .def("worker_pid", &Controller::worker_pid, py::arg("rank"))
      .def("device", &Controller::device, py::arg("rank"))
      .def("lost_workers", &Controller::lost_workers)
      .def("status", &Controller::status)
      .def("attach_info", &Controller::attach_info)
      .def("__enter__", [](Controller& c) -> Controller& { return c; }, py::return_value_policy::reference)
      .def("__exit__", [](Controller& c, py::args) {
        py::gil_scoped_release release;
        c.shutdown();
      });

  py::class_<Shape>(m, "Shape")
      .def(py::init([](const py::object& dims) { return Shape(dims_of(dims)); }), py::arg("dims"))
      .def(py::init<std::vector<std::string>, std::vector<int64_t>, std::vector<int64_t>, int64_t>(),
           py::arg("names"), py::arg("sizes"), py::arg("strides"), py::arg("offset") = 0)
      .def_property_readonly("ndim", &Shape::ndim)
      .def_property_readonly("names", &Shape::names)
      .def_property_readonly("sizes", &Shape::sizes)
      .def_property_readonly("strides", &Shape::strides)
      .def_property_readonly("offset", &Shape::offset)
      .def_property_readonly("ranks", &Shape::ranks)
      .def("size", [](const Shape& s, std::optional<std::string> dim) { return dim ? s.size(*dim) : s.size(); },
           py::arg("dim") = py::none())
      .def("index_of", &Shape::index_of, py::arg("dim"))
      .def("has_dim", &Shape::has_dim, py::arg("dim"))
      .def("rank_of",
           [](const Shape& s, const py::object& coord) {
             return py::isinstance<py::dict>(coord) ? s.rank_of(named_coord(coord.cast<py::dict>()))
                                                    : s.rank_of(coord.cast<Coord>());
           },
           py::arg("coord"))
      .def("coord_of", &Shape::coord_of, py::arg("rank"))
      .def("contains", &Shape::contains, py::arg("rank"))
      .def("__contains__", &Shape::contains)
      .def("local_index", &Shape::local_index, py::arg("rank"))
      .def("slice", py::overload_cast<std::string_view, int64_t>(&Shape::slice, py::const_), py::arg("dim"),
           py::arg("index"))
      .def("slice", py::overload_cast<std::string_view, int64_t, int64_t, int64_t>(&Shape::slice, py::const_),
           py::arg("dim"), py::arg("begin"), py::arg("end"), py::arg("step") = 1)
      .def("slice", [](const Shape& s, const py::dict& indices) { return s.slice(named_coord(indices)); },
           py::arg("indices"))
      .def("split", &Shape::split, py::arg("dim"), py::arg("names"), py::arg("sizes"))
      .def("rename", &Shape::rename, py::arg("old"), py::arg("new"))
      .def("flatten", &Shape::flatten, py::arg("name"))
      .def("is_flattenable", &Shape::is_flattenable)
      .def("transpose", &Shape::transpose, py::arg("a"), py::arg("b"))
      .def("permute", &Shape::permute, py::arg("order"))
      .def("groups", &Shape::groups, py::arg("dims"))
      .def("to_string", &Shape::to_string, py::arg("verbose") = false)
      .def("__str__", [](const Shape& s) { return s.to_string(); })
      .def("__repr__",
           [](const Shape& s) {
             // Strides and offset only for a view that is not row-major over 0..N-1.
             std::vector<std::pair<std::string, int64_t>> dims;
             for (size_t i = 0; i < s.ndim(); ++i) dims.emplace_back(s.names()[i], s.sizes()[i]);
             return "Shape(" + s.to_string(Shape(dims) != s) + ")";
           })
      .def("__eq__", [](const Shape& a, const Shape& b) { return a == b; }, py::is_operator())
      .def("__hash__", [](const Shape& s) { return std::hash<std::string>()(s.to_string(true)); });

  py::class_<DeviceMesh>(m, "DeviceMesh")
      .def_property_readonly("names", [](const DeviceMesh& d) { return d.shape().names(); })
      .def_property_readonly("sizes", [](const DeviceMesh& d) { return d.shape().sizes(); })
      .def_property_readonly("ranks", &DeviceMesh::ranks)
      .def_property_readonly("shape", &DeviceMesh::shape)
      .def("size", [](const DeviceMesh& d, std::optional<std::string> dim) { return dim ? d.size(*dim) : d.size(); },
           py::arg("dim") = py::none())
      .def("slice", py::overload_cast<std::string_view, int64_t>(&DeviceMesh::slice, py::const_), py::arg("dim"),
           py::arg("index"))
      .def("slice", py::overload_cast<std::string_view, int64_t, int64_t, int64_t>(&DeviceMesh::slice, py::const_),
           py::arg("dim"), py::arg("begin"), py::arg("end"), py::arg("step") = 1)
      .def("slice", [](const DeviceMesh& d, const py::dict& indices) { return d.slice(named_coord(indices)); },
           py::arg("indices"))
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
      .def("manual_seed", &DeviceMesh::manual_seed, py::arg("seed"), py::arg("per_rank") = false, py::call_guard<py::gil_scoped_release>())
      .def("load_library", &DeviceMesh::load_library, py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def(
          "live_tensors",
          [](const DeviceMesh& d, const py::dict& coord) {
            const NamedCoord c = named_coord(coord);
            py::gil_scoped_release release;
            return d.live_tensors(c);
          },
          py::arg("coord"))
      .def("__eq__", [](const DeviceMesh& a, const DeviceMesh& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const DeviceMesh& d) { return "DeviceMesh(" + d.shape().to_string() + ")"; });

  py::class_<TensorFuture>(m, "TensorFuture")
      .def(
          "get",
          [](TensorFuture& f, std::optional<double> timeout) {
            at::Tensor v;
            {
              py::gil_scoped_release release;
              v = f.get(ms(timeout));
            }
            return to_torch(v);
          },
          py::arg("timeout") = py::none());

  py::class_<Tensor> tensor(m, "Tensor");
  tensor
      // Metadata may wait for a worker's report (ops without a meta kernel).
      .def_property_readonly("shape", py::cpp_function(&Tensor::sizes, py::call_guard<py::gil_scoped_release>()))
      .def_property_readonly("dtype",
                             [](const Tensor& t) {
                               at::ScalarType dtype;
                               {
                                 py::gil_scoped_release release;
                                 dtype = t.dtype();
                               }
                               return to_torch_dtype(dtype);
                             })
      .def_property_readonly("requires_grad", &Tensor::requires_grad)
      .def_property_readonly("mesh", &Tensor::mesh)
      .def("dim", &Tensor::dim, py::call_guard<py::gil_scoped_release>())
      .def("numel", &Tensor::numel, py::call_guard<py::gil_scoped_release>())
      .def("fetch", [](const Tensor& t, const py::object& coord, std::optional<double> timeout) {
             return to_torch(fetch(t, coord, timeout));
           },
           py::arg("coord"), py::arg("timeout") = py::none())
      .def("fetch_async",
           [](const Tensor& t, const py::object& coord) {
             return py::isinstance<py::dict>(coord) ? t.fetch(named_coord(coord.cast<py::dict>()))
                                                    : t.fetch(coord.cast<Coord>());
           },
           py::arg("coord"))
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
           py::arg("grad") = py::none(), py::call_guard<py::gil_scoped_release>())
      .def("grad", &Tensor::grad, py::call_guard<py::gil_scoped_release>())
      .def("to_mesh", &Tensor::to_mesh, py::arg("mesh"), py::call_guard<py::gil_scoped_release>())
      .def("__matmul__", &Tensor::matmul, py::call_guard<py::gil_scoped_release>())
      .def("__add__", [](const Tensor& a, const Tensor& b) { return a + b; }, py::call_guard<py::gil_scoped_release>())
      .def("__add__", [](const Tensor& a, double b) { return a + b; }, py::call_guard<py::gil_scoped_release>())
      .def("__radd__", [](const Tensor& a, double b) { return a + b; }, py::call_guard<py::gil_scoped_release>())
      .def("__sub__", [](const Tensor& a, const Tensor& b) { return a - b; }, py::call_guard<py::gil_scoped_release>())
      .def("__sub__", [](const Tensor& a, double b) { return a - b; }, py::call_guard<py::gil_scoped_release>())
      .def("__rsub__", [](const Tensor& a, double b) { return (-a) + b; }, py::call_guard<py::gil_scoped_release>())
      .def("__mul__", [](const Tensor& a, const Tensor& b) { return a * b; }, py::call_guard<py::gil_scoped_release>())
      .def("__mul__", [](const Tensor& a, double b) { return a * b; }, py::call_guard<py::gil_scoped_release>())
      .def("__rmul__", [](const Tensor& a, double b) { return a * b; }, py::call_guard<py::gil_scoped_release>())
      .def("__truediv__", [](const Tensor& a, const Tensor& b) { return a / b; }, py::call_guard<py::gil_scoped_release>())
      .def("__truediv__", [](const Tensor& a, double b) { return a / b; }, py::call_guard<py::gil_scoped_release>())
      .def("__neg__", [](const Tensor& a) { return -a; }, py::call_guard<py::gil_scoped_release>())
      .def("__repr__", [](const Tensor& t) -> std::string {
        if (!t.defined()) return "Tensor(undefined)";
        return "Tensor(" + t.mesh().shape().to_string() + ", " + c10::toString(t.dtype()) + "[" +
               fmt_sizes(t.sizes()) + "])";
      });
  // The typed ops and functions of the op table (src/ops/ops.def).
  bind_table_ops(tensor, m);

  // Creation.
  auto creator = [&](const char* name, Tensor (*f)(const DeviceMesh&, std::vector<int64_t>, TensorOptions)) {
    m.def(
        name,
        [f](const DeviceMesh& mesh, std::vector<int64_t> sizes, const py::object& dtype, bool requires_grad) {
          const TensorOptions o = options(dtype, requires_grad);
          py::gil_scoped_release release;
          return f(mesh, std::move(sizes), o);
        },
        py::arg("mesh"), py::arg("sizes"), py::arg("dtype") = py::none(), py::arg("requires_grad") = false);
  };
  creator("zeros", &zeros);
  creator("ones", &ones);
  creator("empty", &empty);
  creator("rand", &rand);
  creator("randn", &randn);
  m.def("full", [](const DeviceMesh& mesh, std::vector<int64_t> sizes, double v, const py::object& dtype,
                   bool requires_grad) {
          const TensorOptions o = options(dtype, requires_grad);
          py::gil_scoped_release release;
          return full(mesh, std::move(sizes), v, o);
        },
        py::arg("mesh"), py::arg("sizes"), py::arg("value"), py::arg("dtype") = py::none(),
        py::arg("requires_grad") = false);
  m.def("arange", [](const DeviceMesh& mesh, int64_t end, const py::object& dtype) {
          const TensorOptions o = options(dtype, false);
          py::gil_scoped_release release;
          return arange(mesh, end, o);
        },
        py::arg("mesh"), py::arg("end"), py::arg("dtype") = py::none());
  m.def("coordinate", &coordinate, py::arg("mesh"), py::arg("dim"), py::call_guard<py::gil_scoped_release>());
  m.def("global_rank", &global_rank, py::arg("mesh"), py::call_guard<py::gil_scoped_release>());
  m.def("mesh_rank", &mesh_rank, py::arg("mesh"), py::call_guard<py::gil_scoped_release>());
  m.def("from_local", [](const DeviceMesh& mesh, const py::object& t, bool requires_grad) {
          const at::Tensor value = from_torch(t);
          py::gil_scoped_release release;
          return from_local(mesh, value, requires_grad);
        },
        py::arg("mesh"), py::arg("tensor"), py::arg("requires_grad") = false);
  m.def("scatter", [](const DeviceMesh& mesh, const py::object& t, int64_t tensor_dim, const std::string& mesh_dim) {
          const at::Tensor value = from_torch(t);
          py::gil_scoped_release release;
          return scatter(mesh, value, tensor_dim, mesh_dim);
        },
        py::arg("mesh"), py::arg("tensor"), py::arg("tensor_dim"), py::arg("mesh_dim"));

  m.def(
      "call_op",
      [](const std::string& name, const std::string& overload, const py::list& args, std::optional<DeviceMesh> mesh) {
        std::vector<Arg> a;
        for (auto v : args) a.push_back(to_arg(v));
        py::gil_scoped_release release;
        return mesh ? call_op(*mesh, name, overload, a) : call_op(name, overload, a);
      },
      py::arg("name"), py::arg("overload"), py::arg("args"), py::arg("mesh") = py::none());

  // Collectives.
  m.def("all_reduce", &all_reduce, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("op") = Reduce::Sum, py::call_guard<py::gil_scoped_release>());
  m.def("all_reduce_", [](Tensor& t, const Dims& dims, Reduce op) { return all_reduce_(t, dims, op); },
        py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("op") = Reduce::Sum, py::call_guard<py::gil_scoped_release>());
  m.def("reduce_scatter", &reduce_scatter, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("op") = Reduce::Sum,
        py::arg("dim") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("all_gather", &all_gather, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("dim") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("all_to_all", &all_to_all, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("split_dim") = 0,
        py::arg("concat_dim") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("broadcast", &broadcast, py::arg("tensor"), py::arg("dims") = Dims{}, py::arg("root") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("barrier", &barrier, py::arg("mesh"), py::arg("dims") = Dims{}, py::call_guard<py::gil_scoped_release>());
  m.def("send_recv", &send_recv, py::arg("tensor"), py::arg("mesh"), py::arg("sources"), py::call_guard<py::gil_scoped_release>());

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
      py::arg("step"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "fused_sgd_momentum_",
      [](const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& buffers,
         double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool first) {
        fused_sgd_momentum_(params, grads, buffers, {lr, momentum, dampening, weight_decay, nesterov}, first);
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::kw_only(), py::arg("lr"),
      py::arg("momentum") = 0.9, py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0,
      py::arg("nesterov") = false, py::arg("first"), py::call_guard<py::gil_scoped_release>());
  m.def("flatten", &flatten, py::arg("tensors"), py::call_guard<py::gil_scoped_release>());
  m.def("unflatten_", &unflatten_, py::arg("flat"), py::arg("tensors"), py::arg("scale") = 1.0, py::call_guard<py::gil_scoped_release>());

  py::class_<NoGrad>(m, "no_grad")
      .def(py::init<DeviceMesh>(), py::arg("mesh"))
      .def("__enter__",
           [](NoGrad& g) {
             py::gil_scoped_release release;
             g.guard = std::make_unique<NoGradGuard>(g.mesh);
           })
      .def("__exit__", [](NoGrad& g, py::args) {
        py::gil_scoped_release release;
        g.guard.reset();
      });
}
