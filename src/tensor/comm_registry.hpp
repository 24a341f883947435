// The communicator registry: the groups a collective over some dims of a
// mesh forms, and one communicator per group of workers, set up on first
// use (split from the world's on GPUs, else each through a rendezvous).
#pragma once

#include <cox/shape.hpp>

#include "controller/runtime.hpp"

#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace cox::tensor {

// Not thread-safe: the engine calls it with its order lock held, so that
// communicators are set up in the one order every worker sees.
class CommRegistry {
 public:
  struct Groups {
    std::vector<std::vector<int>> members;  // global ranks, in group order
    std::vector<uint64_t> comms;            // 0 for a group of one
  };

  // The groups of `shape` along `dims` (all dims when empty), with their
  // communicators. Cached per (mesh view, dims).
  const Groups& groups(runtime::Runtime& rt, const Shape& shape, const std::vector<std::string>& dims);
  // The communicators of these groups (0 for a group of one), made where
  // missing.
  std::vector<uint64_t> comms_for(runtime::Runtime& rt, const std::vector<std::vector<int>>& groups);

 private:
  // The communicator of exactly these ranks, in this order; its members are
  // told to set it up when it is new.
  uint64_t comm_for(runtime::Runtime& rt, const std::vector<int>& ranks);
  bool split_from_world(runtime::Runtime& rt);

  std::unordered_map<std::string, Groups> groups_;
  std::map<std::vector<int>, uint64_t> comms_;
  uint64_t next_comm_ = 1;
};

// The groups along `dims` (all when empty) of a mesh of `shape`, in global
// ranks: the groups a collective over those dims forms. Checks the dims.
std::vector<std::vector<int>> group_members(const Shape& shape, const std::vector<std::string>& dims);

}  // namespace cox::tensor
