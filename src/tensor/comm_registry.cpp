// The communicator registry.
#include "tensor/comm_registry.hpp"

#include "common/check.hpp"

#include <algorithm>
#include <limits>

namespace cox::tensor {

namespace {

uint32_t timeout_ms(const runtime::Runtime& rt) {
  return static_cast<uint32_t>(
      std::min<int64_t>(rt.options().collective_timeout.count(), std::numeric_limits<uint32_t>::max()));
}

void send_to(runtime::Runtime& rt, const std::vector<int>& ranks, const std::vector<uint8_t>& frame) {
  std::vector<runtime::Runtime::Send> sends;
  sends.reserve(ranks.size());
  for (int r : ranks) sends.push_back({r, frame.data(), frame.size()});
  rt.send(sends.data(), sends.size());
}

}  // namespace

std::vector<std::vector<int>> group_members(const Shape& shape, const std::vector<std::string>& dims) {
  for (size_t i = 0; i < dims.size(); ++i) {
    COX_CHECK_ARG(shape.has_dim(dims[i]), "mesh {} has no dim '{}'", shape.to_string(), dims[i]);
    for (size_t j = 0; j < i; ++j) COX_CHECK_ARG(dims[i] != dims[j], "dim '{}' is listed twice", dims[i]);
  }
  std::vector<std::vector<int>> out;
  for (const auto& members : shape.groups(dims.empty() ? shape.names() : dims)) {
    out.emplace_back(members.begin(), members.end());
  }
  return out;
}

uint64_t CommRegistry::comm_for(runtime::Runtime& rt, const std::vector<int>& ranks) {
  if (auto it = comms_.find(ranks); it != comms_.end()) return it->second;
  const uint64_t id = next_comm_++;
  wire::CommInit init;
  init.comm = id;
  init.timeout_ms = timeout_ms(rt);
  init.ranks.assign(ranks.begin(), ranks.end());
  init.hosts.reserve(ranks.size());
  for (int r : ranks) init.hosts.push_back(rt.host(r));
  rt.expect_rendezvous(id, ranks);
  try {
    rt.make_room(ranks, "setting up communicators");
    send_to(rt, ranks, wire::encode_frame(init));
  } catch (const Error& e) {
    // Members already told must not wait for the rest.
    rt.fail_rendezvous(id, e.what());
    throw;
  }
  comms_.emplace(ranks, id);
  return id;
}

// On GPU workers, new groups are split (ncclCommSplit) from one communicator
// over all workers, made once: no rendezvous per group. Every worker takes
// part in a split, so it is used only while no worker is lost.
bool CommRegistry::split_from_world(runtime::Runtime& rt) {
  if (rt.size() < 2 || !rt.lost_workers().empty()) return false;
  for (int r = 0; r < rt.size(); ++r) {
    if (rt.device(r).rfind("cuda", 0) != 0) return false;
  }
  return true;
}

std::vector<uint64_t> CommRegistry::comms_for(runtime::Runtime& rt, const std::vector<std::vector<int>>& groups) {
  std::vector<uint64_t> ids(groups.size(), 0);
  std::vector<size_t> missing;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (groups[i].size() < 2) continue;
    if (auto it = comms_.find(groups[i]); it != comms_.end()) {
      ids[i] = it->second;
    } else {
      missing.push_back(i);
    }
  }
  if (missing.empty()) return ids;
  if (!split_from_world(rt)) {
    for (size_t i : missing) ids[i] = comm_for(rt, groups[i]);
    return ids;
  }
  std::vector<int> world(static_cast<size_t>(rt.size()));
  for (int r = 0; r < rt.size(); ++r) world[static_cast<size_t>(r)] = r;
  const uint64_t parent = comm_for(rt, world);
  // One split makes every missing group that shares no worker with another.
  while (!missing.empty()) {
    std::vector<wire::CommInit> inits(world.size());
    std::vector<size_t> later, made;
    for (size_t i : missing) {
      if (groups[i] == world) {
        ids[i] = parent;
        continue;
      }
      const bool free = std::all_of(groups[i].begin(), groups[i].end(),
                                    [&](int r) { return inits[static_cast<size_t>(r)].comm == 0; });
      if (!free) {
        later.push_back(i);
        continue;
      }
      ids[i] = next_comm_++;
      for (int r : groups[i]) {
        inits[static_cast<size_t>(r)].comm = ids[i];
        inits[static_cast<size_t>(r)].ranks.assign(groups[i].begin(), groups[i].end());
      }
      made.push_back(i);
    }
    if (std::any_of(inits.begin(), inits.end(), [](const wire::CommInit& m) { return m.comm != 0; })) {
      // Room on every worker first: the split reaches all of them or none.
      rt.make_room(world, "setting up communicators");
      std::vector<std::vector<uint8_t>> frames(world.size());
      std::vector<runtime::Runtime::Send> sends;
      for (size_t r = 0; r < world.size(); ++r) {
        inits[r].parent = parent;
        inits[r].timeout_ms = timeout_ms(rt);
        frames[r] = wire::encode_frame(inits[r]);
        sends.push_back({static_cast<int>(r), frames[r].data(), frames[r].size()});
      }
      rt.send(sends.data(), sends.size());
    }
    // Known only once every worker was told (a failed send leaves none).
    for (size_t i : made) comms_.emplace(groups[i], ids[i]);
    missing = std::move(later);
  }
  return ids;
}

const CommRegistry::Groups& CommRegistry::groups(runtime::Runtime& rt, const Shape& shape,
                                                 const std::vector<std::string>& dims) {
  std::string key = shape.to_string(true);
  for (const auto& d : dims) {
    key.push_back('\0');
    key += d;
  }
  if (auto it = groups_.find(key); it != groups_.end()) return it->second;
  Groups g;
  g.members = group_members(shape, dims);
  g.comms = comms_for(rt, g.members);
  return groups_.emplace(std::move(key), std::move(g)).first->second;
}

}  // namespace cox::tensor
