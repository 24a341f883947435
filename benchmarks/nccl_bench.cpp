// all_reduce on CUDA workers against raw NCCL, in the same run, on the same
// GPU: N processes of a plain SPMD program (ncclCommInitRank, then
// ncclAllReduce in place, enqueued back to back, the stream synchronized at
// the end of each round, as nccl-tests times it) beside Coxswain's
// all_reduce_ over a mesh of N CUDA workers.
// Where the workers outnumber the GPUs they share them (a host id per rank,
// as the controller sets it): NCCL then runs over sockets, slow for both.
//
//   time      microseconds per all_reduce (median of rounds)
//   busbw     GB/s, nccl-tests' bus bandwidth: bytes * 2(n-1)/n / time
//   ratio     Coxswain busbw / raw NCCL busbw (1.0 = parity)
//
// Usage: nccl_bench [--quick] [--json FILE]; needs a GPU.
#include <ATen/ATen.h>

#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include "bench_util.hpp"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace cox;
using namespace cox::bench;

namespace {

constexpr int kWorkers = 2;

struct Case {
  int64_t bytes;
  int iters;
};

std::vector<Case> cases(bool quick) {
  std::vector<Case> c{{4 << 10, 50}, {256 << 10, 30}, {4 << 20, 10}};
  if (!quick) c.push_back({32 << 20, 5});
  return c;
}

bool read_all(int fd, void* p, size_t n) {
  auto* b = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::read(fd, b, n);
    if (r <= 0) return false;
    b += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool write_all(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, b, n);
    if (w <= 0) return false;
    b += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

[[noreturn]] void child_fail(int rank, const char* what, const char* why) {
  std::fprintf(stderr, "raw NCCL rank %d: %s: %s\n", rank, what, why);
  std::_Exit(1);
}

// One rank of the raw program; rank 0 makes the unique id and reports the
// times (microseconds per call, one per case) on `results`.
[[noreturn]] void raw_rank(int rank, int n, const std::vector<int>& id_pipes, int id_in, int results,
                           const std::vector<Case>& cs) {
  const std::string host = "cox-bench-" + std::to_string(::getppid()) + "-rank" + std::to_string(rank);
  ::setenv("NCCL_HOSTID", host.c_str(), 1);
  ::setenv("NCCL_SOCKET_IFNAME", "lo", 0);
  ncclUniqueId id;
  if (rank == 0) {
    if (ncclGetUniqueId(&id) != ncclSuccess) child_fail(rank, "ncclGetUniqueId", "failed");
    for (int fd : id_pipes) write_all(fd, &id, sizeof id);
  } else if (!read_all(id_in, &id, sizeof id)) {
    child_fail(rank, "unique id", "not received");
  }
  if (cudaSetDevice(0) != cudaSuccess) child_fail(rank, "cudaSetDevice", "failed");
  ncclComm_t comm;
  if (ncclResult_t r = ncclCommInitRank(&comm, n, id, rank); r != ncclSuccess) {
    child_fail(rank, "ncclCommInitRank", ncclGetErrorString(r));
  }
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  for (const Case& c : cs) {
    void* buf = nullptr;
    cudaMalloc(&buf, static_cast<size_t>(c.bytes));
    cudaMemset(buf, 0, static_cast<size_t>(c.bytes));
    const size_t count = static_cast<size_t>(c.bytes) / sizeof(float);
    auto once = [&] {
      if (ncclResult_t r = ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm, stream); r != ncclSuccess) {
        child_fail(rank, "ncclAllReduce", ncclGetErrorString(r));
      }
    };
    for (int i = 0; i < 3; ++i) once();
    cudaStreamSynchronize(stream);
    std::vector<double> us;
    for (int round = 0; round < 5; ++round) {
      const auto t0 = Clock::now();
      for (int i = 0; i < c.iters; ++i) once();
      cudaStreamSynchronize(stream);
      us.push_back(1e6 * seconds_since(t0) / c.iters);
    }
    const double median = stats(us).median;
    if (rank == 0) write_all(results, &median, sizeof median);
    cudaFree(buf);
  }
  ncclCommDestroy(comm);
  std::_Exit(0);
}

// Runs the raw program; returns microseconds per call for each case.
std::vector<double> run_raw(int n, const std::vector<Case>& cs) {
  int res[2];
  if (::pipe(res) != 0) return {};
  std::vector<int> id_write, id_read;
  for (int r = 1; r < n; ++r) {
    int p[2];
    if (::pipe(p) != 0) return {};
    id_read.push_back(p[0]);
    id_write.push_back(p[1]);
  }
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    const pid_t pid = ::fork();
    if (pid == 0) raw_rank(r, n, r == 0 ? id_write : std::vector<int>{}, r == 0 ? -1 : id_read[r - 1], res[1], cs);
    pids.push_back(pid);
  }
  ::close(res[1]);
  for (int fd : id_write) ::close(fd);
  for (int fd : id_read) ::close(fd);
  std::vector<double> out(cs.size(), 0.0);
  for (double& t : out) {
    if (!read_all(res[0], &t, sizeof t)) break;
  }
  ::close(res[0]);
  bool ok = true;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  if (!ok) std::fprintf(stderr, "nccl_bench: a raw NCCL rank failed\n");
  return ok ? out : std::vector<double>{};
}

}  // namespace

int run(int argc, char** argv) {
  Options o;
  if (!parse_options(argc, argv, "nccl_bench", o)) return 2;
  const std::vector<Case> cs = cases(o.quick);
  // The raw ranks are forked before this process touches CUDA.
  const std::vector<double> raw = run_raw(kWorkers, cs);
  if (raw.empty()) return 1;

  ControllerOptions opts;
  opts.workers = kWorkers;
  opts.device = "cuda";
  opts.gpus = {0};
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"w", kWorkers}});
  JsonRows rows;
  std::printf("all_reduce (in place, float32, sum), %d ranks on GPU 0\n", kWorkers);
  std::printf("%10s %12s %12s %12s %12s %8s\n", "bytes", "cox us", "raw us", "cox GB/s", "raw GB/s", "ratio");
  const double factor = 2.0 * (kWorkers - 1) / kWorkers;
  for (size_t i = 0; i < cs.size(); ++i) {
    const Case& c = cs[i];
    Tensor t = zeros(mesh, {c.bytes / 4});
    for (int k = 0; k < 3; ++k) all_reduce_(t);
    mesh.sync();
    std::vector<double> us;
    for (int round = 0; round < 5; ++round) {
      const auto t0 = Clock::now();
      for (int k = 0; k < c.iters; ++k) all_reduce_(t);
      mesh.sync();
      us.push_back(1e6 * seconds_since(t0) / c.iters);
    }
    const double cox_us = stats(us).median;
    const double cox_bw = c.bytes * factor / cox_us / 1e3, raw_bw = c.bytes * factor / raw[i] / 1e3;
    std::printf("%10lld %12.1f %12.1f %12.3f %12.3f %8.2f\n", static_cast<long long>(c.bytes), cox_us, raw[i], cox_bw,
                raw_bw, cox_bw / raw_bw);
    rows.add({{"bench", "nccl_all_reduce"}, {"case", std::to_string(c.bytes) + "B"}, {"unit", "GB/s"}},
             {{"value", cox_bw}, {"baseline", raw_bw}, {"ratio", cox_bw / raw_bw}, {"bytes", double(c.bytes)},
              {"workers", double(kWorkers)}});
  }
  std::printf("ratio: Coxswain busbw / raw NCCL busbw (1.0 = parity)\n");
  if (!o.json.empty() && !rows.write(o.json)) return 1;
  return 0;
}

int main(int argc, char** argv) { return guarded_main("nccl_bench", argc, argv, run); }
