// Remote functions: C++ code compiled into a shared library, loaded by the
// workers (DeviceMesh::load_library) and called by name from the controller
// (cox::call_remote). This is how a whole module's step runs on the workers
// in one message.
//
//   // my_functions.cpp, built as a shared library against libtorch
//   #include <cox/remote.hpp>
//   std::vector<at::Tensor> sgd_step(const std::vector<at::Tensor>& in,
//                                    const std::vector<double>& scalars) { ... }
//   COX_REMOTE_FUNCTION(sgd_step, sgd_step);
//
// The library needs only libtorch and this header: it does not link Coxswain.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace cox {

using RemoteFunction = std::vector<at::Tensor> (*)(const std::vector<at::Tensor>& inputs,
                                                   const std::vector<double>& scalars);

namespace remote_detail {
struct Entry {
  const char* name;
  RemoteFunction fn;
};
// One list per library (each library has its own copy of this function).
inline std::vector<Entry>& entries() {
  static std::vector<Entry> list;
  return list;
}
}  // namespace remote_detail
}  // namespace cox

// What the worker looks up after loading the library (`used`: emitted in
// every library that includes this header, referenced or not).
extern "C" __attribute__((visibility("default"), used)) inline const cox::remote_detail::Entry* cox_remote_functions(
    size_t* count) {
  *count = cox::remote_detail::entries().size();
  return cox::remote_detail::entries().data();
}

namespace cox::remote_detail {
struct Registrar {
  Registrar(const char* name, RemoteFunction fn) { entries().push_back({name, fn}); }
};
}  // namespace cox::remote_detail

#define COX_REMOTE_FUNCTION(name, fn) \
  static const ::cox::remote_detail::Registrar cox_remote_registrar_##name(#name, fn)
