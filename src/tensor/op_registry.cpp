// The op registry.
#include "tensor/op_registry.hpp"

#include "common/check.hpp"
#include "ops/registry.hpp"

#include <deque>
#include <mutex>
#include <unordered_map>

namespace cox::tensor {

namespace {

struct Registry {
  std::mutex mu;
  std::deque<OpInfo> ops;  // stable addresses
  std::unordered_map<std::string, const OpInfo*> by_name;
};

Registry& registry() {
  static Registry* r = [] {
    ops_detail::ensure_registered();  // Coxswain's own ops are in the dispatcher
    return new Registry();            // never destroyed: handles may outlive static destruction
  }();
  return *r;
}

const c10::Type* unwrap_optional(const c10::TypePtr& t) {
  if (auto opt = t->cast<c10::OptionalType>()) return opt->getElementType().get();
  return t.get();
}

}  // namespace

const OpInfo& intern_op(const std::string& name, const std::string& overload) {
  Registry& reg = registry();
  const std::string qualified = overload.empty() ? name : name + "." + overload;
  std::lock_guard<std::mutex> lk(reg.mu);
  if (auto it = reg.by_name.find(qualified); it != reg.by_name.end()) return *it->second;
  auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
  COX_CHECK_ARG(handle.has_value(), "unknown op '{}' (name '{}', overload '{}')", qualified, name, overload);
  OpInfo& op = reg.ops.emplace_back(*handle);
  op.id = static_cast<uint32_t>(reg.ops.size());
  op.name = name;
  op.overload = overload;
  op.qualified = qualified;
  const c10::FunctionSchema& schema = handle->schema();
  op.nargs = schema.arguments().size();
  for (const auto& a : schema.arguments()) {
    op.device_arg.push_back(unwrap_optional(a.type())->kind() == c10::TypeKind::DeviceObjType);
    op.has_default.push_back(a.default_value().has_value());
    op.defaults.push_back(a.default_value() ? *a.default_value() : c10::IValue());
  }
  for (const auto& ret : schema.returns()) {
    int writes = -1;
    if (ret.alias_info() && ret.alias_info()->isWrite()) {
      for (size_t i = 0; i < schema.arguments().size(); ++i) {
        const auto& ai = schema.arguments()[i].alias_info();
        if (ai && ai->isWrite() && ai->beforeSets() == ret.alias_info()->beforeSets()) writes = static_cast<int>(i);
      }
    }
    op.return_writes_arg.push_back(writes);
    if (ret.type()->kind() == c10::TypeKind::ListType) op.returns_list = true;
  }
  op.is_detach = name == "aten::detach";
  op.is_requires_grad_ = name == "aten::requires_grad_";
  reg.by_name.emplace(qualified, &op);
  return op;
}

}  // namespace cox::tensor
