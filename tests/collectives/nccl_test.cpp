// The NCCL communicator on a GPU: several processes on one GPU (a distinct
// NCCL_HOSTID each, so that NCCL accepts them), every collective and reduce
// kind against results worked out on the host, point to point round a ring,
// a group split from the world, and a peer that dies mid-collective.
// Exits 77 (skipped) where no GPU is visible.
#include "collectives/nccl.hpp"

#include <cuda_runtime_api.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace col = cox::collectives;
using namespace std::chrono_literals;

namespace {

int failures = 0;
#define EXPECT(cond, ...)                                        \
  do {                                                           \
    if (!(cond)) {                                               \
      std::fprintf(stderr, "rank %d: FAILED %s: ", g_rank, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                         \
      std::fprintf(stderr, "\n");                                \
      ++failures;                                                \
    }                                                            \
  } while (0)

int g_rank = -1;

// Rendezvous through files in a shared directory: each member writes its
// blob, then reads everyone's.
col::Exchange file_exchange(const std::string& dir, const std::string& name, int rank, int size) {
  return [=](const std::string& mine) {
    const std::string base = dir + "/" + name + ".";
    {
      std::ofstream(base + std::to_string(rank) + ".tmp", std::ios::binary) << mine;
    }
    std::rename((base + std::to_string(rank) + ".tmp").c_str(), (base + std::to_string(rank)).c_str());
    std::vector<std::string> all(static_cast<size_t>(size));
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    for (int r = 0; r < size; ++r) {
      for (;;) {
        std::ifstream in(base + std::to_string(r), std::ios::binary);
        if (in) {
          std::stringstream ss;
          ss << in.rdbuf();
          all[static_cast<size_t>(r)] = ss.str();
          break;
        }
        if (std::chrono::steady_clock::now() > deadline) throw col::CommError("file rendezvous timed out");
        std::this_thread::sleep_for(1ms);
      }
    }
    return all;
  };
}

template <class T>
std::vector<T> to_host(const void* dev, size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}
template <class T>
void* to_device(const std::vector<T>& v) {
  void* p = nullptr;
  cudaMalloc(&p, std::max<size_t>(v.size() * sizeof(T), 1));
  cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return p;
}

// Rank r's element i: small integers, exact in every type and product.
double value(int r, size_t i) { return static_cast<double>((i * 3 + static_cast<size_t>(r) * 5) % 7 + 1); }

template <class T>
void check_collectives(col::Communicator& c, col::DataType type, const char* tname) {
  const int n = c.size(), me = c.rank();
  const size_t count = 12 * static_cast<size_t>(n);
  std::vector<T> mine(count);
  for (size_t i = 0; i < count; ++i) mine[i] = static_cast<T>(value(me, i));
  void* in = to_device(mine);
  void* out = nullptr;
  cudaMalloc(&out, count * static_cast<size_t>(n) * sizeof(T));

  for (auto op : {col::ReduceOp::kSum, col::ReduceOp::kAvg, col::ReduceOp::kMin, col::ReduceOp::kMax,
                  col::ReduceOp::kProduct}) {
    if (op == col::ReduceOp::kAvg && !std::is_floating_point<T>::value) continue;
    c.all_reduce(in, out, count, type, op);
    col::synchronize_nccl(c);
    const auto got = to_host<T>(out, count);
    for (size_t i = 0; i < count; ++i) {
      double e = value(0, i);
      for (int r = 1; r < n; ++r) {
        const double v = value(r, i);
        if (op == col::ReduceOp::kSum || op == col::ReduceOp::kAvg) e += v;
        if (op == col::ReduceOp::kProduct) e *= v;
        if (op == col::ReduceOp::kMin) e = std::min(e, v);
        if (op == col::ReduceOp::kMax) e = std::max(e, v);
      }
      if (op == col::ReduceOp::kAvg) e /= n;
      EXPECT(std::abs(static_cast<double>(got[i]) - e) < 1e-4, "%s all_reduce %s [%zu]: %g != %g", tname,
             col::to_string(op), i, static_cast<double>(got[i]), e);
    }
    // reduce_scatter: block `me` of the all_reduce.
    c.reduce_scatter(in, out, count / static_cast<size_t>(n), type, op);
    col::synchronize_nccl(c);
    const auto block = to_host<T>(out, count / static_cast<size_t>(n));
    for (size_t i = 0; i < block.size(); ++i) {
      // Another algorithm than all_reduce's: the same value up to rounding.
      const double a = static_cast<double>(block[i]), b = static_cast<double>(got[static_cast<size_t>(me) * block.size() + i]);
      EXPECT(std::abs(a - b) <= 1e-6 * std::max(1.0, std::abs(b)), "%s reduce_scatter %s [%zu]: %g != %g", tname,
             col::to_string(op), i, a, b);
    }
  }
  c.all_gather(in, out, count, type);
  col::synchronize_nccl(c);
  auto gathered = to_host<T>(out, count * static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < count; ++i) {
      EXPECT(gathered[static_cast<size_t>(r) * count + i] == static_cast<T>(value(r, i)), "%s all_gather", tname);
    }
  }
  const size_t per = count / static_cast<size_t>(n);
  c.all_to_all(in, out, per, type);
  col::synchronize_nccl(c);
  auto a2a = to_host<T>(out, count);
  for (int r = 0; r < n; ++r) {
    for (size_t i = 0; i < per; ++i) {
      EXPECT(a2a[static_cast<size_t>(r) * per + i] == static_cast<T>(value(r, static_cast<size_t>(me) * per + i)),
             "%s all_to_all from %d [%zu]", tname, r, i);
    }
  }
  const int root = n - 1;
  c.broadcast(in, out, count, type, root);
  col::synchronize_nccl(c);
  auto b = to_host<T>(out, count);
  for (size_t i = 0; i < count; ++i) EXPECT(b[i] == static_cast<T>(value(root, i)), "%s broadcast [%zu]", tname, i);
  cudaFree(in);
  cudaFree(out);
}

[[noreturn]] void run_rank(int rank, int size, const std::string& dir) {
  g_rank = rank;
  cudaStream_t stream;
  if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreate(&stream) != cudaSuccess) {
    std::fprintf(stderr, "rank %d: no CUDA device\n", rank);
    std::_Exit(1);
  }
  col::CommOptions o;
  o.timeout = 20s;
  auto world = col::connect_nccl(0, stream, rank, size, o, file_exchange(dir, "world", rank, size));
  EXPECT(world->size() == size && world->rank() == rank, "world is %d/%d", world->rank(), world->size());
  check_collectives<float>(*world, col::DataType::kFloat32, "float32");
  check_collectives<double>(*world, col::DataType::kFloat64, "float64");
  check_collectives<int64_t>(*world, col::DataType::kInt64, "int64");

  // A ring of sends and receives in one group.
  {
    std::vector<int32_t> v(1000, rank);
    void* src = to_device(v);
    void* dst = to_device(std::vector<int32_t>(1000, -1));
    world->begin_group();
    auto s = world->start_send(src, v.size() * 4, (rank + 1) % size, 7);
    auto r = world->start_recv(dst, v.size() * 4, (rank + size - 1) % size, 7);
    world->end_group();
    s->wait();
    r->wait();
    const auto got = to_host<int32_t>(dst, 1000);
    EXPECT(got[0] == (rank + size - 1) % size && got[999] == got[0], "ring got %d", got[0]);
    cudaFree(src);
    cudaFree(dst);
  }
  // The status exchange.
  {
    auto st = world->start_status_exchange(static_cast<uint8_t>(rank == 1 ? 1 : 0));
    const auto all = st->finish();
    EXPECT(all.size() == static_cast<size_t>(size) && all[1] == 1 && all[0] == 0, "status exchange");
  }
  // A group split from the world: even ranks together, odd ranks together.
  auto sub = col::split_nccl(*world, rank % 2, rank, o);
  EXPECT(sub != nullptr && sub->size() == (size - rank % 2 + 1) / 2, "split group of %d", sub ? sub->size() : -1);
  if (sub) check_collectives<float>(*sub, col::DataType::kFloat32, "float32 (split)");
  world->barrier();

  // The last rank dies; the others' next collective fails (an NCCL error,
  // or the timeout, which aborts the communicator) instead of hanging.
  if (rank == size - 1) std::_Exit(0);
  bool failed = false;
  try {
    void* x = nullptr;
    cudaMalloc(&x, 1024 * sizeof(float));
    world->all_reduce(x, x, 1024, col::DataType::kFloat32, col::ReduceOp::kSum);
    col::synchronize_nccl(*world);
  } catch (const col::CommError& e) {
    failed = true;
    std::fprintf(stderr, "rank %d: as expected, after the peer died: %s\n", rank, e.what());
    EXPECT(!world->broken().empty(), "the communicator is marked broken");
  }
  EXPECT(failed, "a collective with a dead peer completed");
  // A collective stuck on the device for a peer that never comes (rank 0's
  // even group still counts the dead rank) is cancelled from another
  // thread, as a worker's I/O thread does on a lost peer: the wait ends
  // with that reason (not the timeout's), and the communicator is aborted.
  if (sub && rank == 0) {
    void* x = nullptr;
    cudaMalloc(&x, 1024 * sizeof(float));
    std::string why;
    try {
      sub->all_reduce(x, x, 1024, col::DataType::kFloat32, col::ReduceOp::kSum);
      std::thread([&] { sub->cancel("worker 2 was lost: test"); }).join();
      col::synchronize_nccl(*sub);
    } catch (const col::CommError& e) {
      why = e.what();
    }
    EXPECT(why.find("worker 2 was lost: test") != std::string::npos, "cancel ended the wait with: '%s'", why.c_str());
  }
  // Communicators that include the dead rank are left to the process exit:
  // finalizing them would wait for it.
  std::fflush(stderr);
  std::_Exit(failures ? 1 : 0);
}

}  // namespace

int main() {
  // Probe in a child: CUDA must not be initialised before fork().
  pid_t probe = ::fork();
  if (probe == 0) {
    int n = 0;
    std::_Exit(cudaGetDeviceCount(&n) == cudaSuccess && n > 0 ? 0 : 77);
  }
  int status = 0;
  ::waitpid(probe, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::printf("skipped: no CUDA device visible\n");
    return 77;
  }
  char tmpl[] = "/tmp/cox-nccl-test-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const int size = 3;
  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setenv("NCCL_HOSTID", ("cox-nccl-test-" + std::to_string(r)).c_str(), 1);
      try {
        run_rank(r, size, dir);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
      }
      std::_Exit(1);
    }
    pids.push_back(pid);
  }
  int bad = 0;
  const auto deadline = std::chrono::steady_clock::now() + 240s;
  for (pid_t pid : pids) {
    for (;;) {
      int st = 0;
      const pid_t w = ::waitpid(pid, &st, WNOHANG);
      if (w == pid) {
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++bad;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "a rank hung: killing it\n");
        ::kill(pid, SIGKILL);
        ++bad;
      }
      std::this_thread::sleep_for(10ms);
    }
  }
  std::system(("rm -rf '" + dir + "'").c_str());
  std::printf("%s\n", bad ? "FAILED" : "passed");
  return bad ? 1 : 0;
}
