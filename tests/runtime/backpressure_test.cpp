// Backpressure and liveness under heavy traffic: a busy worker, a slow
// reader, a paused worker (SIGSTOP, then SIGCONT). In every case no worker
// that is alive is declared lost, and every blocking call returns or throws
// within its deadline (the bounds checked here are that deadline plus a
// generous margin: they catch hangs, not slowness).
#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include "runtime/test_util.hpp"

#include <ATen/ATen.h>

#include <catch2/catch.hpp>

#include <signal.h>

#include <atomic>
#include <thread>

using namespace cox;
using namespace cox::test;

namespace {

using Clock = std::chrono::steady_clock;

// n bytes (a multiple of 8) that differ from word to word, made cheaply.
at::Tensor pattern(int64_t n, int64_t seed) {
  at::Tensor t = at::empty({n}, at::kByte);
  t.view(at::kLong).copy_(at::arange(seed, seed + n / 8, at::kLong));
  return t;
}

// Runs f, which must throw cox::Timeout mentioning `text`, within `limit`.
template <class F>
void times_out(F f, const std::string& text, std::chrono::milliseconds limit) {
  const auto t0 = Clock::now();
  try {
    f();
    FAIL("expected cox::Timeout");
  } catch (const Timeout& e) {
    INFO(e.what());
    REQUIRE_THAT(e.what(), Catch::Contains(text));
  }
  REQUIRE(Clock::now() - t0 < limit);
}

ControllerOptions quick_heartbeats(int workers) {
  auto o = local_options(workers);
  o.heartbeat_interval = 100ms;
  o.heartbeat_timeout = 1500ms;
  return o;
}

}  // namespace

TEST_CASE("a busy worker receives large tensors late, but is never declared lost", "[backpressure]") {
  // The worker's stream is blocked for three heartbeat timeouts while 600
  // MiB wait for it: heartbeats must travel both ways regardless.
  Controller ctl = Controller::local(quick_heartbeats(1));
  DeviceMesh mesh = ctl.mesh({{"w", 1}});
  std::vector<at::Tensor> values;
  for (int i = 0; i < 3; ++i) values.push_back(pattern(int64_t{200} << 20, int64_t{i} << 30));
  post(ctl, 0, wire::Sleep{4500});
  std::vector<Tensor> sent;
  for (const auto& v : values) sent.push_back(from_local(mesh, v));
  ctl.sync(60000ms);
  for (int i = 0; i < 3; ++i) REQUIRE(at::equal(sent[static_cast<size_t>(i)].fetch({0}).get(), values[static_cast<size_t>(i)]));
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("blocking calls honour their deadlines while a worker is busy, and recover after", "[backpressure]") {
  auto opts = local_options(2);
  opts.send_timeout = 1000ms;
  opts.send_buffer_bytes = size_t{4} << 20;
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"w", 2}});
  const at::Tensor big = pattern(int64_t{256} << 20, 1);
  Tensor on_one = from_local(mesh.slice("w", 1, 2), at::ones({4}));
  Tensor on_both = from_local(mesh, at::ones({4}));
  post(ctl, 1, wire::Sleep{9000});
  // Worker 1 reads nothing: the send waits for send_timeout, then names it;
  // work issued to it after that waits for room the same way.
  times_out([&] { from_local(mesh.slice("w", 1), big); }, "worker 1 has", 10000ms);
  times_out([&] { ctl.sync(500ms); }, "MiB not yet sent to it)] did not finish within 500 ms", 10000ms);
  times_out([&] { ctl.ping(1, 300ms); }, "ping: worker 1 did not answer within 300 ms (", 10000ms);
  times_out([&] { on_one.fetch({0}).get(300ms); }, "MiB not yet sent to it)", 10000ms);
  times_out([&] { on_one.add(1.0); }, "worker 1 has", 10000ms);
  // An op or a collective over both workers reaches neither when one has
  // no room: none is left half-sent.
  times_out([&] { on_both.add(1.0); }, "worker 1 has", 10000ms);
  times_out([&] { all_reduce(on_both, {"w"}); }, "worker 1 has", 10000ms);
  // Worker 0 was never held up.
  REQUIRE(ctl.ping(0, 5000ms).count() > 0);
  // Once worker 1 reads again, everything queued arrives and the stream
  // goes on.
  ctl.sync(60000ms);
  Tensor after = from_local(mesh, big);
  REQUIRE(at::equal(after.fetch({1}).get(60000ms), big));
  REQUIRE(at::equal(all_reduce(on_both, {"w"}).fetch({0}).get(60000ms), at::full({4}, 2.0)));
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("a healthy worker answering four 300 MiB fetches is not declared lost", "[backpressure]") {
  Controller ctl = Controller::local(quick_heartbeats(1));
  DeviceMesh mesh = ctl.mesh({{"w", 1}});
  const at::Tensor v = pattern(int64_t{300} << 20, 5);
  Tensor t = from_local(mesh, v);
  std::vector<TensorFuture> futures;
  for (int i = 0; i < 4; ++i) futures.push_back(t.fetch({0}));
  for (auto& f : futures) REQUIRE(at::equal(f.get(60000ms), v));
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("a slow reader holds back only the thread issuing work", "[backpressure]") {
  auto opts = quick_heartbeats(2);
  opts.send_buffer_bytes = size_t{1} << 20;
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"w", 2}});
  post(ctl, 0, wire::Sleep{3000});
  // 128 MiB of small sends and ops to a worker that reads nothing for a
  // while: the issuing thread waits for room (not the I/O thread, so the
  // heartbeats go on), and nothing is dropped.
  Tensor acc = from_local(mesh, at::zeros({int64_t{1} << 17}));
  for (int i = 0; i < 256; ++i) acc = acc + from_local(mesh, at::ones({int64_t{1} << 17}));
  REQUIRE(impl_of(ctl).pending_bytes(0) <= opts.send_buffer_bytes + (size_t{1} << 20));
  REQUIRE(at::equal(acc.fetch({0}).get(60000ms), at::full({int64_t{1} << 17}, 256.0)));
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("a worker paused under multi-GiB traffic carries on when resumed", "[backpressure]") {
  auto opts = local_options(1);
  opts.heartbeat_interval = 200ms;
  opts.heartbeat_timeout = 10000ms;  // the pause stays well inside it
  Controller ctl = Controller::local(opts);
  DeviceMesh mesh = ctl.mesh({{"w", 1}});
  const at::Tensor v = pattern(int64_t{1} << 30, 9);
  const auto pid = static_cast<pid_t>(ctl.worker_pid(0));
  std::atomic<bool> done{false};
  std::exception_ptr error;
  at::Tensor back;
  std::thread traffic([&] {
    try {
      Tensor t = from_local(mesh, v);
      Tensor u = from_local(mesh, v);
      back = (u - t).sum().to(at::kLong).fetch({0}).get(60000ms);
      back = t.fetch({0}).get(60000ms);
    } catch (...) {
      error = std::current_exception();
    }
    done = true;
  });
  // Pause the worker once the traffic is under way, and resume it once the
  // controller has a backlog for it.
  REQUIRE(eventually([&] { return done || impl_of(ctl).pending_bytes(0) > 0; }, 30000ms));
  ::kill(pid, SIGSTOP);
  const bool backlog = eventually([&] { return done || impl_of(ctl).pending_bytes(0) > (size_t{32} << 20); }, 5000ms);
  ::kill(pid, SIGCONT);
  traffic.join();
  REQUIRE(backlog);
  if (error) std::rethrow_exception(error);
  REQUIRE(at::equal(back, v));
  ctl.sync(30000ms);
  REQUIRE(ctl.lost_workers().empty());
}

TEST_CASE("a worker's output line without a newline is passed on in bounded pieces", "[backpressure][output]") {
  CapturedOutput captured;
  auto opts = local_options(1);
  opts.output_sink = captured.sink();
  Controller ctl = Controller::local(opts);
  // A progress bar: 200 KB of \r-separated updates on one line.
  std::string bar;
  for (int i = 0; bar.size() < 200000; ++i) bar += "\rstep " + std::to_string(i) + " [##########          ]";
  post(ctl, 0, wire::Print{wire::Stream::kStdout, bar});
  ctl.sync(30000ms);
  std::string joined;
  REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> lk(captured.mu);
    joined.clear();
    for (auto& [r, s, line] : captured.lines) joined += line;
    return joined.size() >= bar.size() - 64;  // a \r at the end of a piece is dropped
  }));
  std::lock_guard<std::mutex> lk(captured.mu);
  REQUIRE(captured.lines.size() > 1);
  for (auto& [r, s, line] : captured.lines) REQUIRE(line.size() <= 16 * 1024);
}
