// A CUDA worker's streams and events.
//
// Ops run on the compute stream (made current for libtorch); collectives
// and transfers on the communication stream. Events order the two: the
// communication stream waits for the compute work issued before a
// collective, and a collective's outputs carry an event that the first op
// reading them makes the compute stream wait for. Work that does not depend
// on a collective's result overlaps it.
//
// Defined in gpu_cuda.cpp where libtorch has CUDA; elsewhere make_gpu()
// explains that this worker cannot run on a GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <string>

namespace cox::worker {

class Gpu {
 public:
  // A point in the communication stream; done once the collectives issued
  // before it are.
  class Event {
   public:
    virtual ~Event() = default;
  };

  virtual ~Gpu() = default;

  // The communication stream (a cudaStream_t), for the communicators.
  virtual void* comm_stream() = 0;

  // Makes the communication stream wait for the compute work issued so far.
  virtual void comm_after_compute() = 0;
  // Runs f with the communication stream current (allocations and copies
  // around a collective go there), then returns the event that marks its end.
  virtual std::shared_ptr<Event> on_comm(const std::function<void()>& f) = 0;
  // `t`, made on the compute stream, is used by the communication stream:
  // its memory is not reused before that use is done.
  virtual void comm_uses(const at::Tensor& t) = 0;
  // The compute stream waits for `e` before what is issued next; `t` is
  // the collective's output that the compute stream now uses.
  virtual void compute_after(const Event& e, const at::Tensor& t) = 0;

  // Waits for everything issued on both streams (for sync), polling `check`
  // (which throws on a failed communicator); throws cox::Timeout past
  // `timeout`, and with CUDA's message on an asynchronous CUDA error.
  virtual void synchronize(const std::function<void()>& check, std::chrono::milliseconds timeout) = 0;

  // Starts copying `t` (on the device) to pinned host memory; `done` runs on
  // another thread once the copy has finished, with the host tensor, or with
  // the exception that says why it failed. Work issued meanwhile is not held
  // up.
  virtual void copy_to_host(const at::Tensor& t,
                            std::function<void(const at::Tensor& host, std::exception_ptr error)> done) = 0;
};

// Binds this process to `device` (a CUDA device) and makes its streams.
// Throws cox::Error when libtorch has no CUDA or the device does not exist.
std::unique_ptr<Gpu> make_gpu(const c10::Device& device, std::function<void()> check_comms,
                              std::chrono::milliseconds timeout);

// The device a worker uses when none is given: "cuda:<LOCAL_RANK, or rank
// modulo the visible GPUs>" where libtorch has CUDA and a GPU is visible,
// else "cpu".
std::string default_device(int rank);

}  // namespace cox::worker
