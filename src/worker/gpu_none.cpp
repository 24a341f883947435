// Workers built against a libtorch without CUDA run on CPU only.
#include "worker/gpu.hpp"

#include <cox/errors.hpp>

namespace cox::worker {

std::unique_ptr<Gpu> make_gpu(const c10::Device& device, std::function<void()>, std::chrono::milliseconds) {
  throw InvalidArgument("device " + device.str() +
                        ": this worker's libtorch has no CUDA (build Coxswain against a CUDA libtorch, e.g. the one "
                        "in a pip-installed torch)");
}

std::string default_device(int) { return "cpu"; }

}  // namespace cox::worker
