// Collectives through Coxswain against the same collectives on raw Gloo, in
// the style of nccl-tests: for all_reduce, all_gather, reduce_scatter,
// broadcast and all_to_all over a range of sizes, the time per call, algbw
// and busbw, and the ratio of Coxswain's busbw to the baseline's.
//
// Coxswain: one controller, N CPU workers on a mesh {N}; each round issues
// the collective K times and waits for the workers (DeviceMesh::sync).
// Baseline: N processes of a plain SPMD program (this binary, re-executed)
// that connect a Gloo context through a file store and call the same Gloo
// collective K times per round between two barriers; rank 0's clock. Both
// report the median of 3 rounds, float32 data, the same sizes. The two run
// by turns, one (op, size) block each, so that both meet the same machine.
//
// Sizes follow nccl-tests: the size of a rank's buffer (the output for
// all_gather, the input for reduce_scatter). busbw = algbw * factor, with
// factor 2(n-1)/n for all_reduce, (n-1)/n for all_gather, reduce_scatter
// and all_to_all, 1 for broadcast.
//
// Coxswain's reduce_scatter is its own ring over Gloo's point-to-point
// buffers (Gloo has no reduce-scatter in its new-style API); the baseline
// uses Gloo's ReduceScatterHalvingDoubling.
#include "bench_util.hpp"
#include "spmd_group.hpp"

#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/reduce_scatter.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>


#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace {

using cox::bench::Clock;
using cox::bench::seconds_since;

const std::vector<std::string> kOps{"all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all"};
constexpr int kRounds = 3;

struct Plan {
  int workers = 4;
  size_t min_bytes = 1024;
  size_t max_bytes = size_t{64} << 20;
  std::vector<std::string> ops = kOps;
  int max_iters = 100;  // calls per round at most

  std::vector<size_t> sizes() const {
    std::vector<size_t> v;
    for (size_t b = min_bytes; b <= max_bytes; b *= 4) v.push_back(b);
    return v;
  }
  // Calls per round: about 32 MiB of buffer per round, 2 to max_iters calls.
  int iters(size_t bytes) const {
    return static_cast<int>(std::clamp<size_t>((size_t{32} << 20) / bytes, 2, static_cast<size_t>(max_iters)));
  }
};

double bus_factor(const std::string& op, int n) {
  const double r = static_cast<double>(n - 1) / n;
  if (op == "all_reduce") return 2 * r;
  if (op == "broadcast") return 1;
  return r;
}

// ---------------------------------------------------------------------------
// The baseline: one rank of a plain SPMD program on raw Gloo.

int run_baseline_rank(const Plan& plan, int rank, const std::string& dir) {
  cox::bench::SpmdGroup::set_rank_threads();
  gloo::transport::tcp::attr attr;
  attr.hostname = "127.0.0.1";
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(dir);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, plan.workers);
  ctx->setTimeout(std::chrono::minutes(5));  // ranks wait in a barrier while Coxswain's turn runs
  ctx->connectFullMesh(store, dev);
  const int n = plan.workers;
  uint32_t tag = 0;
  auto barrier = [&] {
    gloo::BarrierOptions o(ctx);
    o.setTag(tag++);
    gloo::barrier(o);
  };
  for (const auto& op : plan.ops) {
    for (size_t bytes : plan.sizes()) {
      const size_t count = bytes / sizeof(float);
      std::vector<float> a(count * static_cast<size_t>(n), 1.0f), b(count * static_cast<size_t>(n), 0.0f);
      std::function<void()> call;
      std::unique_ptr<gloo::ReduceScatterHalvingDoubling<float>> rs;
      if (op == "all_reduce") {
        call = [&] {
          gloo::AllreduceOptions o(ctx);
          o.setOutput(a.data(), count);
          o.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
          o.setTag(tag++);
          gloo::allreduce(o);
        };
      } else if (op == "all_gather") {
        call = [&] {
          gloo::AllgatherOptions o(ctx);
          o.setInput(a.data(), count / static_cast<size_t>(n));
          o.setOutput(b.data(), count);
          o.setTag(tag++);
          gloo::allgather(o);
        };
      } else if (op == "reduce_scatter") {
        std::vector<int> recv(static_cast<size_t>(n), static_cast<int>(count / static_cast<size_t>(n)));
        rs = std::make_unique<gloo::ReduceScatterHalvingDoubling<float>>(ctx, std::vector<float*>{a.data()}, count, recv);
        call = [&] { rs->run(); };
      } else if (op == "broadcast") {
        call = [&] {
          gloo::BroadcastOptions o(ctx);
          o.setOutput(a.data(), count);
          o.setRoot(0);
          o.setTag(tag++);
          gloo::broadcast(o);
        };
      } else {
        call = [&] {
          gloo::AlltoallOptions o(ctx);
          o.setInput(a.data(), count);
          o.setOutput(b.data(), count);
          o.setTag(tag++);
          gloo::alltoall(o);
        };
      }
      const int k = plan.iters(bytes);
      // Rank 0 waits for the go of the benchmark's driver (a byte on stdin),
      // so that this block and Coxswain's run by turns, never together.
      if (rank == 0 && !cox::bench::SpmdGroup::wait_turn()) return 1;
      barrier();
      call();  // warm up
      std::vector<double> rounds;
      for (int r = 0; r < kRounds; ++r) {
        barrier();
        const auto t0 = Clock::now();
        for (int i = 0; i < k; ++i) call();
        barrier();
        rounds.push_back(seconds_since(t0) / k);
      }
      if (rank == 0) cox::bench::SpmdGroup::report(cox::bench::stats(rounds).median);
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------
// Coxswain.

// Both sides, by turns: for each (op, size), the baseline's block, then
// Coxswain's, so that both see the same machine.
void run_both(const Plan& plan, const char* self, std::map<std::pair<std::string, size_t>, double>& times,
              std::map<std::pair<std::string, size_t>, double>& raw) {
  cox::ControllerOptions o;
  o.workers = plan.workers;
  cox::Controller ctl = cox::Controller::local(o);
  cox::DeviceMesh mesh = ctl.mesh({{"x", plan.workers}});
  std::string ops;
  for (const auto& op : plan.ops) ops += (ops.empty() ? "" : ",") + op;
  cox::bench::SpmdGroup baseline(self, plan.workers, [&](int r, const std::string& dir) {
    return std::vector<std::string>{"--baseline-rank", std::to_string(r), "--baseline-dir", dir, "--workers",
                                    std::to_string(plan.workers), "--min-bytes", std::to_string(plan.min_bytes),
                                    "--max-bytes", std::to_string(plan.max_bytes), "--max-iters",
                                    std::to_string(plan.max_iters), "--ops", ops};
  });
  const int64_t n = plan.workers;
  for (const auto& op : plan.ops) {
    for (size_t bytes : plan.sizes()) {
      raw[{op, bytes}] = baseline.run_block();
      const int64_t count = static_cast<int64_t>(bytes / sizeof(float));
      cox::Tensor full = cox::ones(mesh, {count});
      cox::Tensor part = cox::ones(mesh, {count / n});
      std::function<void()> call;
      if (op == "all_reduce") {
        call = [&] { cox::all_reduce_(full, {"x"}); };
      } else if (op == "all_gather") {
        call = [&] { cox::all_gather(part, {"x"}); };
      } else if (op == "reduce_scatter") {
        call = [&] { cox::reduce_scatter(full, {"x"}); };
      } else if (op == "broadcast") {
        call = [&] { cox::broadcast(full, {"x"}, 0); };
      } else {
        call = [&] { cox::all_to_all(full, {"x"}); };
      }
      const int k = plan.iters(bytes);
      call();
      mesh.sync();
      std::vector<double> rounds;
      for (int r = 0; r < kRounds; ++r) {
        const auto t0 = Clock::now();
        for (int i = 0; i < k; ++i) call();
        mesh.sync();
        rounds.push_back(seconds_since(t0) / k);
      }
      times[{op, bytes}] = cox::bench::stats(rounds).median;
    }
  }
}

std::string human(size_t bytes) {
  if (bytes >= (size_t{1} << 20)) return std::to_string(bytes >> 20) + " MiB";
  if (bytes >= 1024) return std::to_string(bytes >> 10) + " KiB";
  return std::to_string(bytes) + " B";
}

}  // namespace

int main(int argc, char** argv) {
  Plan plan;
  cox::bench::Options common;
  int baseline_rank = -1;
  std::string baseline_dir;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--workers") {
      plan.workers = std::stoi(value());
    } else if (a == "--min-bytes") {
      plan.min_bytes = std::stoull(value());
    } else if (a == "--max-bytes") {
      plan.max_bytes = std::stoull(value());
    } else if (a == "--ops") {
      std::stringstream ss(value());
      plan.ops.clear();
      for (std::string op; std::getline(ss, op, ',');) {
        if (std::find(kOps.begin(), kOps.end(), op) == kOps.end()) {
          std::fprintf(stderr, "unknown op '%s'\n", op.c_str());
          return 2;
        }
        plan.ops.push_back(op);
      }
    } else if (a == "--max-iters") {
      plan.max_iters = std::stoi(value());
    } else if (a == "--baseline-rank") {
      baseline_rank = std::stoi(value());
    } else if (a == "--baseline-dir") {
      baseline_dir = value();
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (baseline_rank >= 0) return run_baseline_rank(plan, baseline_rank, baseline_dir);
  if (!cox::bench::parse_options(static_cast<int>(rest.size()), rest.data(), "collectives_bench", common)) {
    std::fprintf(stderr,
                 "       [--workers N] [--min-bytes B] [--max-bytes B] [--max-iters K] [--ops all_reduce,...]\n");
    return 2;
  }
  if (common.quick) plan.max_bytes = std::min<size_t>(plan.max_bytes, size_t{4} << 20);
  if (common.tiny) {
    plan.workers = 2;
    plan.max_bytes = std::min<size_t>(plan.max_bytes, size_t{16} << 10);
    plan.max_iters = std::min(plan.max_iters, 5);
  }
  if (plan.workers < 2 || plan.min_bytes < 64 || plan.min_bytes > plan.max_bytes || plan.max_iters < 2) {
    std::fprintf(stderr, "need --workers >= 2, 64 <= --min-bytes <= --max-bytes and --max-iters >= 2\n");
    return 2;
  }
  // Sizes must split evenly over the workers in float32 elements.
  plan.min_bytes = plan.min_bytes / (sizeof(float) * plan.workers) * sizeof(float) * plan.workers;

  std::map<std::pair<std::string, size_t>, double> raw, cox_times;
  run_both(plan, argv[0], cox_times, raw);

  cox::bench::JsonRows rows;
  std::printf("collectives: %d CPU workers (Gloo), float32; time per call, busbw, ratio to raw Gloo's busbw\n",
              plan.workers);
  std::printf("%-15s %10s %12s %12s %12s %12s %7s\n", "op", "size", "time (us)", "busbw GB/s", "raw (us)",
              "raw GB/s", "ratio");
  for (const auto& op : plan.ops) {
    for (size_t bytes : plan.sizes()) {
      const double t = cox_times.at({op, bytes}), tr = raw.at({op, bytes});
      const double f = bus_factor(op, plan.workers);
      const double algbw = static_cast<double>(bytes) / t / 1e9, algbw_raw = static_cast<double>(bytes) / tr / 1e9;
      const double busbw = algbw * f, busbw_raw = algbw_raw * f;
      std::printf("%-15s %10s %12.1f %12.3f %12.1f %12.3f %7.2f\n", op.c_str(), human(bytes).c_str(), t * 1e6, busbw,
                  tr * 1e6, busbw_raw, busbw / busbw_raw);
      const std::string c = op + "/" + std::to_string(bytes);
      rows.add({{"bench", "collectives"}, {"case", c + "/busbw"}, {"unit", "GB/s"}},
               {{"value", busbw}, {"baseline", busbw_raw}, {"ratio", busbw / busbw_raw}, {"bytes", double(bytes)},
                {"workers", double(plan.workers)}});
      rows.add({{"bench", "collectives"}, {"case", c + "/time"}, {"unit", "us"}},
               {{"value", t * 1e6}, {"baseline", tr * 1e6}, {"ratio", tr / t}, {"algbw", algbw},
                {"bytes", double(bytes)}, {"workers", double(plan.workers)}});
    }
  }
  // One figure per op against the aim (0.95 of raw busbw from 1 MiB up): the
  // geometric mean of the ratios there, which single noisy sizes move less.
  std::printf("\ngeometric mean of the busbw ratio, sizes >= 1 MiB:");
  for (const auto& op : plan.ops) {
    double log_sum = 0;
    int count = 0;
    for (size_t bytes : plan.sizes()) {
      if (bytes < (size_t{1} << 20)) continue;
      log_sum += std::log(raw.at({op, bytes}) / cox_times.at({op, bytes}));
      ++count;
    }
    if (!count) continue;
    const double g = std::exp(log_sum / count);
    std::printf(" %s %.2f", op.c_str(), g);
    rows.add({{"bench", "collectives"}, {"case", op + "/busbw_ratio_geomean_1MiB+"}, {"unit", "ratio"}},
             {{"value", g}, {"workers", double(plan.workers)}});
  }
  std::printf("\n");
  if (!common.json.empty() && !rows.write(common.json)) {
    std::fprintf(stderr, "cannot write %s\n", common.json.c_str());
    return 1;
  }
  return 0;
}
