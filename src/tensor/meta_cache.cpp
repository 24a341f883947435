// The meta cache and meta inference.
#include "tensor/meta_cache.hpp"

#include "common/check.hpp"
#include "tensor/checks.hpp"

#include <ATen/ATen.h>

namespace cox::tensor {

CacheEntry learned_entry(const OpInfo& op) {
  CacheEntry entry;
  entry.learned = true;
  for (int w : op.return_writes_arg) entry.outs.push_back({w, {}});
  return entry;
}

CacheEntry infer(const OpInfo& op, torch::jit::Stack& stack, const std::function<std::string()>& describe) {
  try {
    call_meta_checked(op.handle, stack);  // the meta run, and what it misses (tensor/checks.cpp)
  } catch (const c10::NotImplementedError&) {
    // No meta kernel: the workers will tell.
    COX_CHECK_ARG(!op.returns_list, "{} has no meta kernel and returns a list of tensors, which is not supported",
                  op.qualified);
    return learned_entry(op);
  } catch (const c10::Error& e) {
    throw InvalidArgument(fmt::format("{}({}): {}", op.qualified, describe(), e.what_without_backtrace()));
  } catch (const cox::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw InvalidArgument(fmt::format("{}({}): {}", op.qualified, describe(), e.what()));
  }
  CacheEntry entry;
  for (size_t i = 0; i < stack.size(); ++i) {
    const int writes = i < op.return_writes_arg.size() ? op.return_writes_arg[i] : -1;
    const c10::IValue& v = stack[i];
    if (writes >= 0) {
      entry.outs.push_back({writes, {}});
    } else if (v.isTensor()) {
      entry.outs.push_back({-1, Meta::of(v.toTensor())});
    } else if (v.isTensorList()) {
      for (const at::Tensor& t : v.toTensorList()) entry.outs.push_back({-1, Meta::of(t)});
    } else {
      throw InvalidArgument(fmt::format("{} returns a {}, not a tensor; only tensor results are supported",
                                        op.qualified, v.tagKind()));
    }
  }
  return entry;
}

MetaCache::Entry MetaCache::find(const std::string& key) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : it->second;
}

MetaCache::Entry MetaCache::insert(const std::string& key, CacheEntry entry) {
  auto e = std::make_shared<const CacheEntry>(std::move(entry));
  std::lock_guard<std::mutex> lk(mu_);
  if (entries_.size() >= kMaxEntries) entries_.clear();
  return entries_.insert_or_assign(key, std::move(e)).first->second;
}

void MetaCache::learn(const std::string& key, const std::vector<Meta>& metas) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || !it->second->learned) return;
  CacheEntry known = *it->second;
  size_t k = 0;
  for (auto& o : known.outs) {
    if (o.writes_arg < 0 && k < metas.size()) o.meta = metas[k++];
  }
  known.learned = false;
  it->second = std::make_shared<const CacheEntry>(std::move(known));
}

}  // namespace cox::tensor
