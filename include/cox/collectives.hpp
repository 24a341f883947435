// Collectives over named mesh dimensions, and moving tensors between meshes.
//
//   cox::Tensor g = cox::all_reduce(grad, {"dp"}, cox::Reduce::Avg);
//   cox::Tensor h = cox::all_gather(x, {"tp"}, /*dim=*/1);
//   cox::Tensor a = activations.to_mesh(stage1);   // a pipeline hop
//
// The group of a worker is the set of workers of the tensor's mesh (a
// sub-mesh too) that differ from it only along the given dims; each group
// runs the collective on its own. An empty dim list means every dim of the
// mesh. Members are ordered row-major over the dims as listed: that order
// decides which block of a reduce_scatter each member keeps, where each
// member's shard lands in an all_gather, and which member is the root of a
// broadcast.
//
// Results have their metadata on the controller at once; bad arguments
// (an unknown dim, a tensor dim the group size does not divide, an
// unsupported dtype) throw InvalidArgument here, before anything is sent.
// A collective always runs on every member: where an input is an error
// value, that member contributes a placeholder, and the result is an error
// value on every member of the group. A collective whose peer dies ends in
// an error value whose fetch throws WorkerLost. Results do not record
// autograd history.
//
// Workers run collectives with Gloo on CPU (NCCL on GPU), over communicators
// set up on first use of each group, with the controller as the rendezvous.
#pragma once

#include <cox/export.hpp>
#include <cox/tensor.hpp>

#include <string>
#include <vector>

namespace cox {

enum class Reduce : uint8_t { Sum = 0, Avg = 1, Min = 2, Max = 3, Product = 4 };

using Dims = std::vector<std::string>;

// A new tensor: the reduction over each group. Avg of integers truncates
// toward zero.
COX_API Tensor all_reduce(const Tensor& t, const Dims& dims = {}, Reduce op = Reduce::Sum);
// The same, in place; returns t.
COX_API Tensor& all_reduce_(Tensor& t, const Dims& dims = {}, Reduce op = Reduce::Sum);
// Reduces over each group, then member i keeps block i of `dim` (whose size
// the group size must divide).
COX_API Tensor reduce_scatter(const Tensor& t, const Dims& dims = {}, Reduce op = Reduce::Sum, int64_t dim = 0);
// Concatenates the members' shards along `dim`, in member order.
COX_API Tensor all_gather(const Tensor& t, const Dims& dims = {}, int64_t dim = 0);
// Member i splits its shard into group-size blocks along `split_dim` and
// sends block j to member j; what arrives is concatenated along
// `concat_dim` in member order.
COX_API Tensor all_to_all(const Tensor& t, const Dims& dims = {}, int64_t split_dim = 0, int64_t concat_dim = 0);
// Every member gets the shard of member `root` of its group.
COX_API Tensor broadcast(const Tensor& t, const Dims& dims = {}, int64_t root = 0);
// The workers of each group wait for each other (an ordering point among
// workers; the controller does not wait: see DeviceMesh::sync).
COX_API void barrier(const DeviceMesh& mesh, const Dims& dims = {});

// Point to point: the shard of `t`'s worker at row-major index sources[j]
// of t's mesh moves to the worker at row-major index j of `dst`, for every
// worker of `dst` (a source may feed several). A worker on both sides keeps
// its own shard without a copy. Tensor::to_mesh is the common case.
COX_API Tensor send_recv(const Tensor& t, const DeviceMesh& dst, const std::vector<int64_t>& sources);

}  // namespace cox
