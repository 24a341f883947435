// The meta cache: what an op returns (output metadata, or which input it
// writes in place) per signature, learned by running the op on meta
// tensors, or, for ops without a meta kernel, from a worker's report.
#pragma once

#include "tensor/op_registry.hpp"
#include "wire/meta.hpp"

#include <ATen/core/stack.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace cox::tensor {

using wire::Meta;

struct OutSpec {
  int writes_arg = -1;  // an input written in place
  Meta meta;
};

struct CacheEntry {
  std::vector<OutSpec> outs;
  bool learned = false;  // no meta kernel: metadata comes from a worker
};

// An entry with every output's metadata to be learned (an op whose input is
// an error value, or one without a meta kernel).
CacheEntry learned_entry(const OpInfo& op);

// Runs an op on meta tensors: its arguments as a boxed stack, devices on
// Meta. Throws InvalidArgument (naming the op and `describe`d arguments)
// where libtorch rejects the call.
CacheEntry infer(const OpInfo& op, torch::jit::Stack& stack, const std::function<std::string()>& describe);

// Thread-safe. Entries are immutable once in; learning replaces one.
class MetaCache {
 public:
  using Entry = std::shared_ptr<const CacheEntry>;
  Entry find(const std::string& key) const;
  Entry insert(const std::string& key, CacheEntry entry);
  // A worker reported the metadata of a learned entry's outputs.
  void learn(const std::string& key, const std::vector<Meta>& metas);

 private:
  // Bounded: a program whose shapes never repeat starts over rather than
  // growing without end.
  static constexpr size_t kMaxEntries = 1 << 16;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace cox::tensor
