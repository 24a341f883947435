// The worker process: connects to its controller, proves the token, then
// runs the controller's ordered message stream until told to shut down.
#pragma once

#include <chrono>
#include <string>

namespace cox::worker {

struct WorkerOptions {
  std::string connect;  // "unix:/path/to/socket", "host:port" or "[v6addr]:port"
  int rank = -1;
  // "cpu", "cuda" or "cuda:N"; empty: $COX_DEVICE, else the GPU
  // LOCAL_RANK (or rank) modulo the visible GPUs where libtorch has CUDA,
  // else the CPU.
  std::string device;
  // How long to keep trying to reach the controller (it may start later
  // than the workers when they are launched by a scheduler).
  std::chrono::milliseconds connect_timeout{60000};
  std::chrono::milliseconds handshake_timeout{10000};
};

// Runs the worker; returns the process exit code. Throws cox::Error on a
// failure before the stream starts (unreachable controller, refused token).
int run_worker(const WorkerOptions& options);

}  // namespace cox::worker
