// all_reduce on CUDA workers against raw NCCL, in the same run, on the same
// GPU: N processes of a plain SPMD program (ncclCommInitRank, then
// ncclAllReduce in place, enqueued back to back, the stream synchronized at
// the end of each round, as nccl-tests times it) beside Coxswain's
// all_reduce_ over a mesh of N CUDA workers.
// Where the workers outnumber the GPUs they share them (a host id per rank,
// as the controller sets it): NCCL then runs over sockets, slow for both.
//
// The two sides take turns round by round (raw, Coxswain, raw, ...), each
// warming up in its first turn of a size: the raw ranks wait for a go byte
// per round, so none of them sits in a collective (an NCCL kernel spinning
// on the GPU) while Coxswain's round runs.
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
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
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

constexpr int kRounds = 5;

bool read_all(int fd, void* p, size_t n) {
  auto* b = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::read(fd, b, n);
    if (r < 0 && errno == EINTR) continue;
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
    if (w < 0 && errno == EINTR) continue;
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

// What each raw rank reports per round (under PIPE_BUF: one atomic write).
struct RoundDone {
  int32_t rank;
  double us;  // per call
};

// One rank of the raw program: rank 0 makes the unique id. For each case
// and round it waits for a go byte on `go`, runs the round (the first of a
// case after a warm-up) and reports on `results`.
[[noreturn]] void raw_rank(int rank, int n, const std::vector<int>& id_pipes, int id_in, int go, int results,
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
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    child_fail(rank, "cudaStreamCreateWithFlags", "failed");
  }
  for (const Case& c : cs) {
    void* buf = nullptr;
    if (cudaMalloc(&buf, static_cast<size_t>(c.bytes)) != cudaSuccess) child_fail(rank, "cudaMalloc", "failed");
    cudaMemset(buf, 0, static_cast<size_t>(c.bytes));
    const size_t count = static_cast<size_t>(c.bytes) / sizeof(float);
    auto once = [&] {
      if (ncclResult_t r = ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, comm, stream); r != ncclSuccess) {
        child_fail(rank, "ncclAllReduce", ncclGetErrorString(r));
      }
    };
    for (int round = 0; round < kRounds; ++round) {
      char g;
      if (!read_all(go, &g, 1)) std::_Exit(0);  // the benchmark is done (or gone)
      if (round == 0) {
        for (int i = 0; i < 3; ++i) once();
        cudaStreamSynchronize(stream);
      }
      const auto t0 = Clock::now();
      for (int i = 0; i < c.iters; ++i) once();
      if (cudaStreamSynchronize(stream) != cudaSuccess) child_fail(rank, "cudaStreamSynchronize", "failed");
      const RoundDone done{rank, 1e6 * seconds_since(t0) / c.iters};
      if (!write_all(results, &done, sizeof done)) std::_Exit(1);
    }
    cudaFree(buf);
  }
  ncclCommDestroy(comm);
  std::_Exit(0);
}

// The raw program: its ranks are forked at construction, before this
// process touches CUDA, and run one round per round() call.
class RawNccl {
 public:
  RawNccl(int n, const std::vector<Case>& cs) : n_(n) {
    // A rank that died must show as a failed write (EPIPE), not kill the
    // driver; the ranks inherit it for their results pipe.
    ::signal(SIGPIPE, SIG_IGN);
    int res[2];
    if (::pipe(res) != 0) throw std::runtime_error("pipe failed");
    results_ = res[0];
    std::vector<int> id_write, id_read, go_read;
    for (int r = 0; r < n; ++r) {
      int g[2];
      if (::pipe(g) != 0) throw std::runtime_error("pipe failed");
      go_read.push_back(g[0]);
      go_.push_back(g[1]);
      if (r == 0) continue;
      int p[2];
      if (::pipe(p) != 0) throw std::runtime_error("pipe failed");
      id_read.push_back(p[0]);
      id_write.push_back(p[1]);
    }
    for (int r = 0; r < n; ++r) {
      const pid_t pid = ::fork();
      if (pid < 0) {
        stop(true);
        throw std::runtime_error("fork failed");
      }
      if (pid == 0) {
        // Only the driver holds the go ends and only rank 0 the id ends, so
        // that a rank sees EOF when the one it waits for is gone.
        for (int fd : go_) ::close(fd);
        if (r != 0) {
          for (int fd : id_write) ::close(fd);
        }
        ::close(results_);
        raw_rank(r, n, r == 0 ? id_write : std::vector<int>{}, r == 0 ? -1 : id_read[static_cast<size_t>(r - 1)],
                 go_read[static_cast<size_t>(r)], res[1], cs);
      }
      pids_.push_back(pid);
    }
    ::close(res[1]);
    for (int fd : id_write) ::close(fd);
    for (int fd : id_read) ::close(fd);
    for (int fd : go_read) ::close(fd);
  }
  ~RawNccl() { stop(false); }
  RawNccl(const RawNccl&) = delete;
  RawNccl& operator=(const RawNccl&) = delete;

  // Lets every rank run its next round; returns rank 0's microseconds per
  // call once all ranks are done. Throws if a rank fails or a round takes
  // more than two minutes.
  double round() {
    const char g = 'g';
    for (int fd : go_) {
      if (!write_all(fd, &g, 1)) fail("a raw NCCL rank is gone");
    }
    double rank0 = -1;
    for (int i = 0; i < n_; ++i) {
      pollfd p{results_, POLLIN, 0};
      RoundDone done{};
      if (::poll(&p, 1, 120000) != 1) fail("a raw NCCL round took more than 2 minutes");
      if (!read_all(results_, &done, sizeof done)) fail("a raw NCCL rank failed");
      if (done.rank == 0) rank0 = done.us;
    }
    return rank0;
  }

 private:
  [[noreturn]] void fail(const char* why) {
    stop(true);
    throw std::runtime_error(why);
  }
  void stop(bool kill) {
    for (int fd : go_) ::close(fd);  // EOF: the ranks exit
    go_.clear();
    for (pid_t pid : pids_) {
      if (kill) ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    pids_.clear();
    if (results_ >= 0) ::close(results_);
    results_ = -1;
  }

  int n_;
  std::vector<int> go_;
  int results_ = -1;
  std::vector<pid_t> pids_;
};

}  // namespace

int run(int argc, char** argv) {
  Options o;
  if (!parse_options(argc, argv, "nccl_bench", o)) return 2;
  const std::vector<Case> cs = cases(o.quick);
  // Forked before this process touches CUDA.
  RawNccl raw(kWorkers, cs);

  ControllerOptions opts;
  opts.workers = kWorkers;
  opts.device = "cuda";
  opts.gpus = {0};
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"w", kWorkers}});
  JsonRows rows;
  std::printf("all_reduce (in place, float32, sum), %d ranks on GPU 0; medians of %d rounds taken by turns\n",
              kWorkers, kRounds);
  std::printf("%10s %12s %12s %12s %12s %8s\n", "bytes", "cox us", "raw us", "cox GB/s", "raw GB/s", "ratio");
  const double factor = 2.0 * (kWorkers - 1) / kWorkers;
  for (const Case& c : cs) {
    Tensor t = zeros(mesh, {c.bytes / 4});
    std::vector<double> us, raw_us;
    for (int round = 0; round < kRounds; ++round) {
      raw_us.push_back(raw.round());
      if (round == 0) {
        for (int k = 0; k < 3; ++k) all_reduce_(t);
        mesh.sync();
      }
      const auto t0 = Clock::now();
      for (int k = 0; k < c.iters; ++k) all_reduce_(t);
      mesh.sync();
      us.push_back(1e6 * seconds_since(t0) / c.iters);
    }
    const double cox_us = stats(us).median, raw_med = stats(raw_us).median;
    const double cox_bw = c.bytes * factor / cox_us / 1e3, raw_bw = c.bytes * factor / raw_med / 1e3;
    std::printf("%10lld %12.1f %12.1f %12.3f %12.3f %8.2f\n", static_cast<long long>(c.bytes), cox_us, raw_med, cox_bw,
                raw_bw, cox_bw / raw_bw);
    rows.add({{"bench", "nccl_all_reduce"}, {"case", std::to_string(c.bytes) + "B"}, {"unit", "GB/s"}},
             {{"value", cox_bw}, {"baseline", raw_bw}, {"ratio", cox_bw / raw_bw}, {"bytes", double(c.bytes)},
              {"workers", double(kWorkers)}, {"rounds", double(kRounds)}});
  }
  std::printf("ratio: Coxswain busbw / raw NCCL busbw (1.0 = parity)\n");
  if (!o.json.empty() && !rows.write(o.json)) return 1;
  return 0;
}

int main(int argc, char** argv) { return guarded_main("nccl_bench", argc, argv, run); }
