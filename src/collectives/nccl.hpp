// Communicator over NCCL, for CUDA workers. Compiles with the CUDA toolkit
// and NCCL alone (no CUDA libtorch).
//
// Collectives are enqueued on the communicator's stream and return at once;
// the caller orders that stream against its compute stream with events.
// Communicators are non-blocking NCCL communicators, so that a wait that
// runs past the timeout (a peer gone) can abort them instead of hanging.
#pragma once

#include "collectives/communicator.hpp"

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

namespace cox::collectives {

// Creates a group from scratch: member 0 makes the NCCL unique id and the
// others receive it through `exchange`. Runs on `device`, enqueues on `stream`.
std::unique_ptr<Communicator> connect_nccl(int device, cudaStream_t stream, int rank, int size,
                                           const CommOptions& options, const Exchange& exchange);

// Splits a group out of `parent` (an NCCL communicator): every member of
// `parent` must call this, in the same order; members with the same `color`
// form a group, ranked by `key`; color < 0 joins no group (returns null).
std::unique_ptr<Communicator> split_nccl(Communicator& parent, int color, int key, const CommOptions& options);

// Throws CommError when NCCL has reported an asynchronous error on `comm`
// (a peer gone) or it was aborted. May be called from another thread than
// the one issuing collectives, as long as `comm` outlives the call and is
// not aborted meanwhile.
void check_nccl(Communicator& comm);

// Aborts `comm` (its pending collectives end; later calls throw).
void abort_nccl(Communicator& comm, const std::string& why);

// Waits until everything enqueued on the communicator's stream is done,
// failing (and aborting the communicator) past the timeout or on an NCCL
// error.
void synchronize_nccl(Communicator& comm);

}  // namespace cox::collectives
