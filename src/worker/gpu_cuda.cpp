// The CUDA worker's streams and events (see gpu.hpp). Compiled only where
// libtorch has CUDA.
#include "worker/gpu.hpp"

#include <cox/errors.hpp>

#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace cox::worker {
namespace {

using Clock = std::chrono::steady_clock;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(fmt::format("CUDA {}: {}", what, cudaGetErrorString(e)));
}

class CudaEvent final : public Gpu::Event {
 public:
  CudaEvent() { check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate"); }
  ~CudaEvent() override { cudaEventDestroy(event); }
  cudaEvent_t event = nullptr;
};

// Polls `e` until done; `check` throws on a failed communicator.
void poll(cudaEvent_t e, const std::function<void()>& check_comms, std::chrono::milliseconds timeout,
          const char* what) {
  const auto deadline = Clock::now() + timeout;
  for (auto pause = std::chrono::microseconds(2);; pause = std::min(pause * 2, std::chrono::microseconds(50))) {
    const cudaError_t q = cudaEventQuery(e);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) check(q, what);
    if (check_comms) check_comms();
    if (Clock::now() > deadline) {
      throw Timeout(fmt::format("{}: the GPU work it waits for did not finish within {} ms", what, timeout.count()));
    }
    std::this_thread::sleep_for(pause);
  }
}

class CudaGpu final : public Gpu {
 public:
  CudaGpu(const c10::Device& device, std::function<void()> check_comms, std::chrono::milliseconds timeout)
      : index_(device.index()),
        check_comms_(std::move(check_comms)),
        timeout_(timeout),
        compute_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index_)),
        comm_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, index_)) {
    c10::cuda::set_device(index_);
    c10::cuda::setCurrentCUDAStream(compute_);
    completer_ = std::thread([this] { complete(); });
  }
  ~CudaGpu() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    completer_.join();
  }

  void* comm_stream() override { return comm_.stream(); }

  void comm_after_compute() override {
    // An event recorded again later still orders the waits made before.
    check(cudaEventRecord(scratch_.event, compute_.stream()), "cudaEventRecord");
    check(cudaStreamWaitEvent(comm_.stream(), scratch_.event, 0), "cudaStreamWaitEvent");
  }

  std::shared_ptr<Event> on_comm(const std::function<void()>& f) override {
    {
      c10::cuda::CUDAStreamGuard guard(comm_);
      f();
    }
    auto e = std::make_shared<CudaEvent>();
    check(cudaEventRecord(e->event, comm_.stream()), "cudaEventRecord");
    return e;
  }

  void comm_uses(const at::Tensor& t) override {
    if (t.defined() && t.is_cuda()) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), comm_);
  }

  void compute_after(const Event& e, const at::Tensor& t) override {
    check(cudaStreamWaitEvent(compute_.stream(), static_cast<const CudaEvent&>(e).event, 0), "cudaStreamWaitEvent");
    if (t.defined() && t.is_cuda()) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), compute_);
  }

  void synchronize(const std::function<void()>& check_comms, std::chrono::milliseconds timeout) override {
    for (const c10::cuda::CUDAStream& s : {comm_, compute_}) {
      check(cudaEventRecord(scratch_.event, s.stream()), "cudaEventRecord");
      poll(scratch_.event, check_comms, timeout, "sync");
    }
    check(cudaGetLastError(), "sync");
  }

  void copy_to_host(const at::Tensor& t, std::function<void(const at::Tensor&, std::exception_ptr)> done) override {
    const at::Tensor src = t.detach().contiguous();
    at::Tensor host = at::empty(src.sizes(), src.options().device(at::kCPU).pinned_memory(true));
    host.copy_(src, /*non_blocking=*/true);
    auto e = std::make_shared<CudaEvent>();
    check(cudaEventRecord(e->event, compute_.stream()), "cudaEventRecord");
    {
      std::lock_guard<std::mutex> lk(mu_);
      // `src` stays referenced until the copy is done.
      pending_.push_back(Pending{std::move(e), src, std::move(host), std::move(done)});
    }
    cv_.notify_one();
  }

 private:
  struct Pending {
    std::shared_ptr<CudaEvent> event;
    at::Tensor src;
    at::Tensor host;
    std::function<void(const at::Tensor&, std::exception_ptr)> done;
  };

  // Copies to host finish in order (one stream), so one thread takes them
  // in turn.
  void complete() {
    for (;;) {
      Pending p;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || !pending_.empty(); });
        if (pending_.empty()) return;
        p = std::move(pending_.front());
        pending_.pop_front();
      }
      try {
        poll(p.event->event, check_comms_, timeout_, "fetch");
      } catch (...) {
        p.done(at::Tensor(), std::current_exception());
        continue;
      }
      p.done(p.host, nullptr);
    }
  }

  const c10::DeviceIndex index_;
  const std::function<void()> check_comms_;
  const std::chrono::milliseconds timeout_;
  c10::cuda::CUDAStream compute_;
  c10::cuda::CUDAStream comm_;
  CudaEvent scratch_;  // for the waits that need no event of their own
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::thread completer_;
};

}  // namespace

std::unique_ptr<Gpu> make_gpu(const c10::Device& device, std::function<void()> check_comms,
                              std::chrono::milliseconds timeout) {
  const int count = c10::cuda::device_count();
  if (!device.is_cuda() || !device.has_index() || device.index() < 0 || device.index() >= count) {
    throw InvalidArgument(fmt::format("device {} does not exist here ({} CUDA device{} visible)", device.str(), count,
                                      count == 1 ? "" : "s"));
  }
  return std::make_unique<CudaGpu>(device, std::move(check_comms), timeout);
}

std::string default_device(int rank) {
  const int count = c10::cuda::device_count();
  if (count <= 0) return "cpu";
  int index = rank % count;
  if (const char* local = std::getenv("LOCAL_RANK"); local && *local) index = std::atoi(local) % count;
  return fmt::format("cuda:{}", index);
}

}  // namespace cox::worker
