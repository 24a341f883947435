// The per-op dispatch path: small ops issued from the controller to a
// 1-worker and a 4-worker mesh, beside the same ops on raw libtorch in this
// process, in the same run.
//
//   issue rate   ops/s the controller enqueues (meta cache warm), not waiting
//   end to end   ops/s from the first issue until every worker finished
//   raw          ops/s of the same loop on raw libtorch, one process
//
// Workloads: `add` of two 1K-float tensors, and a 4-op chain
// (add, mul, relu, sub). With --device cuda the workers are CUDA workers on
// GPU 0 and the raw loop runs on that GPU (each timing ends when the GPU is
// done). Usage: dispatch_bench [--quick | --tiny] [--json FILE] [--device cpu|cuda]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cox/tensor.hpp>

#include "bench_util.hpp"

#include <cstdio>
#include <iostream>
#include <string>

using namespace cox;
using namespace cox::bench;

namespace {

struct Result {
  double issue, end_to_end, raw;
};

// Raw ops on a GPU are asynchronous: a copy back waits for them.
void finish(const at::Tensor& last) {
  if (last.defined() && !last.device().is_cpu()) (void)last.sum().item<float>();
}

template <class Remote, class Raw>
Result measure(const DeviceMesh& mesh, int ops_per_iter, int iters, Remote remote, Raw raw) {
  // Warm up: meta cache, worker caches, allocator.
  for (int i = 0; i < 200; ++i) remote();
  mesh.sync();
  for (int i = 0; i < 200; ++i) raw();
  finish(raw());

  Result r{};
  std::vector<double> issue, e2e, rawv;
  for (int round = 0; round < 5; ++round) {
    auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) remote();
    const double t_issue = seconds_since(t0);
    mesh.sync();
    const double t_all = seconds_since(t0);
    issue.push_back(iters * ops_per_iter / t_issue);
    e2e.push_back(iters * ops_per_iter / t_all);
    t0 = Clock::now();
    at::Tensor last;
    for (int i = 0; i < iters; ++i) last = raw();
    finish(last);
    rawv.push_back(iters * ops_per_iter / seconds_since(t0));
  }
  r.issue = stats(issue).median;
  r.end_to_end = stats(e2e).median;
  r.raw = stats(rawv).median;
  return r;
}

}  // namespace

int run(int argc, char** argv) {
  Options opts_cli;
  if (!parse_options(argc, argv, "dispatch_bench", opts_cli)) return 2;
  const bool quick = opts_cli.quick;
  const std::string json = opts_cli.json;
  at::set_num_threads(1);  // small ops: what is measured is dispatch, not kernels
  const int iters = opts_cli.tiny ? 400 : quick ? 5000 : 20000;
  JsonRows rows;
  std::printf("%-8s %7s %14s %14s %14s %8s\n", "workload", "workers", "issue ops/s", "e2e ops/s", "raw ops/s",
              "raw/e2e");
  const bool cuda = opts_cli.device == "cuda";
  const at::Device device = cuda ? at::Device("cuda:0") : at::Device(at::kCPU);
  std::printf("workers on %s\n", device.str().c_str());
  for (int workers : opts_cli.tiny ? std::vector<int>{1, 2} : std::vector<int>{1, 4}) {
    ControllerOptions opts;
    opts.workers = workers;
    opts.device = opts_cli.device;
    if (cuda) opts.gpus = {0};
    opts.worker_env = [](int) { return std::vector<std::pair<std::string, std::string>>{{"OMP_NUM_THREADS", "1"}}; };
    Controller ctl = Controller::local(opts);
    DeviceMesh mesh = ctl.mesh({{"w", workers}});
    Tensor a = ones(mesh, {1024}), b = ones(mesh, {1024});
    at::Tensor la = at::ones({1024}, device), lb = at::ones({1024}, device);

    Result add = measure(
        mesh, 1, iters, [&] { Tensor c = a + b; }, [&] { return la + lb; });
    Result chain = measure(
        mesh, 4, iters / 4, [&] { Tensor c = relu((a + b) * 2.0) - 1.0; },
        [&] { return at::relu((la + lb) * 2.0) - 1.0; });
    for (auto& [name, r] : {std::pair<const char*, Result>{"add", add}, {"chain4", chain}}) {
      std::printf("%-8s %7d %14.0f %14.0f %14.0f %8.2f\n", name, workers, r.issue, r.end_to_end, r.raw,
                  r.raw / r.end_to_end);
      const std::string c = std::string(name) + "/" + opts_cli.device + "/workers=" + std::to_string(workers);
      rows.add({{"bench", "dispatch"}, {"case", c + "/end_to_end"}, {"unit", "ops/s"}},
               {{"value", r.end_to_end}, {"baseline", r.raw}, {"ratio", r.raw / r.end_to_end}, {"workers", double(workers)}});
      rows.add({{"bench", "dispatch"}, {"case", c + "/issue"}, {"unit", "ops/s"}},
               {{"value", r.issue}, {"workers", double(workers)}});
    }
  }
  std::printf("raw/e2e: how many times faster raw libtorch in one process is (1.0 = parity)\n");
  if (!json.empty() && !rows.write(json)) return 1;
  return 0;
}

int main(int argc, char** argv) { return guarded_main("dispatch_bench", argc, argv, run); }
