// Failures that must never hang: a peer cut off in the middle of a
// collective (its connections stay open, as across a network split), a
// controller that falls silent while its worker is busy, and operations
// that run too long. Processes are stopped with SIGSTOP rather than killed,
// so that nothing closes a socket: only the runtime's own liveness can
// tell.
#include "runtime/test_util.hpp"

#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <optional>
#include <sstream>

using namespace cox;
using namespace cox::test;

namespace {

std::string endpoint(const AttachInfo& info) { return info.host + ":" + std::to_string(info.port); }

// Attach mode with `n` workers started here (so that the controller cannot
// kill them: a stopped one stays stopped, its sockets open).
struct AttachedGroup {
  std::vector<Proc> procs;
  std::optional<Controller> ctl;

  AttachedGroup(int n, ControllerOptions o) {
    o.workers = n;
    o.listen_host = "127.0.0.1";
    o.startup_timeout = 20000ms;
    o.on_listening = [&](const AttachInfo& info) {
      for (int r = 0; r < n; ++r) procs.push_back(start_worker(endpoint(info), r, {{"COX_TOKEN", info.token}}));
    };
    ctl.emplace(Controller::attach(o));
  }
  ~AttachedGroup() {
    for (auto& p : procs) {
      ::kill(p.s.pid, SIGCONT);
    }
    ctl.reset();
    for (auto& p : procs) p.finish(10000ms);
  }
  pid_t pid(int rank) const { return procs[static_cast<size_t>(rank)].s.pid; }
};

bool doing(Controller& ctl, int rank, const std::string& what) {
  const auto s = ctl.status()[static_cast<size_t>(rank)];
  return s.state == WorkerStatus::State::kBusy && s.doing == what;
}

}  // namespace

TEST_CASE("survivors blocked in a collective with a cut-off peer end in WorkerLost, at heartbeat speed",
          "[failure][lost]") {
  ControllerOptions o;
  o.heartbeat_interval = 100ms;
  o.heartbeat_timeout = 1500ms;
  // Far beyond the waits below: only the loss of the peer can end them.
  o.collective_timeout = std::chrono::minutes(10);
  o.output_sink = [](int, OutputStream, std::string_view) {};
  AttachedGroup g(3, o);
  Controller& ctl = *g.ctl;
  DeviceMesh m = ctl.mesh({{"x", 3}});
  Tensor x = ones(m, {1 << 12});
  REQUIRE(all_reduce(x).fetch({{"x", 0}}).get(30000ms)[0].item<float>() == 3.0f);

  // Worker 2 stops; its connections, to the controller and to its peers,
  // stay open and silent.
  REQUIRE(::kill(g.pid(2), SIGSTOP) == 0);
  Tensor y = all_reduce(x);
  // Workers 0 and 1 are inside the collective, waiting for worker 2 (or
  // already out of it, once worker 2 was found lost).
  REQUIRE(eventually([&] {
    return (doing(ctl, 0, "collective all_reduce") && doing(ctl, 1, "collective all_reduce")) ||
           !ctl.lost_workers().empty();
  }, 20000ms));
  for (int64_t r : {0, 1}) {
    try {
      // A deadline far below collective_timeout: WorkerLost must come from
      // the loss itself (heartbeat_timeout), not from Gloo's timeout.
      y.fetch({{"x", r}}).get(30000ms);
      FAIL("expected WorkerLost");
    } catch (const WorkerLost& e) {
      CHECK(e.rank() == 2);
    }
  }
  CHECK(ctl.status()[2].state == WorkerStatus::State::kLost);
  // Groups without the lost worker keep working.
  DeviceMesh alive = m.slice("x", 0, 2);
  CHECK(all_reduce(ones(alive, {4})).fetch({{"x", 1}}).get(30000ms)[0].item<float>() == 2.0f);
  CHECK_THROWS_AS(all_reduce(x), WorkerLost);
}

TEST_CASE("a busy worker whose controller falls silent exits after heartbeat_timeout", "[failure][supervision]") {
  // The controller runs in a child process, which the test stops.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(fds[0]);
    try {
      ControllerOptions o;
      o.workers = 1;
      o.listen_host = "127.0.0.1";
      o.heartbeat_interval = 100ms;
      o.heartbeat_timeout = 1000ms;
      o.on_listening = [&](const AttachInfo& info) {
        std::string line = endpoint(info) + " " + info.token + "\n";
        (void)!::write(fds[1], line.data(), line.size());
      };
      Controller ctl = Controller::attach(o);
      ctl.sync();
      // Busy for far longer than the test waits.
      post(ctl, 0, wire::Sleep{60000});
      if (eventually([&] { return doing(ctl, 0, "sleep"); }, 20000ms)) (void)!::write(fds[1], "busy\n", 5);
      ::pause();
    } catch (...) {
    }
    std::_Exit(1);
  }
  ::close(fds[1]);
  auto read_line = [&] {
    char c;
    std::string line;
    while (::read(fds[0], &c, 1) == 1 && c != '\n') line += c;
    return line;
  };
  std::istringstream first(read_line());
  std::string ep, token;
  first >> ep >> token;
  Proc p = start_worker(ep, 0, {{"COX_TOKEN", token}});
  REQUIRE(read_line() == "busy");
  ::close(fds[0]);
  REQUIRE(::kill(child, SIGSTOP) == 0);
  // finish() kills it after 20 s; the sleep alone would last 60 s.
  p.finish(20000ms);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  INFO(p.err);
  REQUIRE(p.exited_with(1));
  REQUIRE_THAT(p.err, Catch::Contains("no message from the controller"));
}

TEST_CASE("status() tells what each worker runs; op_timeout warns once, naming the worker and the operation",
          "[failure][status]") {
  CapturedOutput out;
  ControllerOptions o = local_options(2);
  o.heartbeat_interval = 50ms;
  o.op_timeout = 200ms;
  o.output_sink = out.sink();
  Controller ctl = Controller::local(o);
  ctl.sync();
  auto before = ctl.status();
  REQUIRE(before.size() == 2);
  CHECK(before[1].state == WorkerStatus::State::kIdle);
  post(ctl, 1, wire::Sleep{1500});
  REQUIRE(eventually([&] { return doing(ctl, 1, "sleep"); }, 10000ms));
  auto now = ctl.status();
  CHECK(now[0].state == WorkerStatus::State::kIdle);
  CHECK_THAT(to_string(now[1]), Catch::Contains("worker 1") && Catch::Contains("busy") && Catch::Contains("sleep"));
  auto warned = [&] {
    std::lock_guard<std::mutex> lk(out.mu);
    int n = 0;
    for (auto& [r, s, l] : out.lines) {
      if (r == 1 && l.find("op_timeout") != std::string::npos && l.find("sleep") != std::string::npos) ++n;
    }
    return n;
  };
  REQUIRE(eventually([&] { return warned() == 1; }, 10000ms));
  ctl.sync(30000ms);  // the sleep ends; the worker was only warned about
  CHECK(warned() == 1);
  CHECK(ctl.lost_workers().empty());
  // As of its next heartbeat.
  CHECK(eventually([&] { return ctl.status()[1].state == WorkerStatus::State::kIdle; }, 10000ms));
}

TEST_CASE("op_timeout_loses_worker turns an operation that runs too long into WorkerLost", "[failure][status]") {
  ControllerOptions o = local_options(2);
  o.heartbeat_interval = 50ms;
  o.op_timeout = 200ms;
  o.op_timeout_loses_worker = true;
  o.output_sink = [](int, OutputStream, std::string_view) {};
  Controller ctl = Controller::local(o);
  ctl.sync();
  post(ctl, 1, wire::Sleep{60000});
  try {
    ctl.sync(30000ms);
    FAIL("expected WorkerLost");
  } catch (const WorkerLost& e) {
    CHECK(e.rank() == 1);
    CHECK_THAT(e.what(), Catch::Contains("sleep") && Catch::Contains("op_timeout"));
  }
  ctl.ping(0, 10000ms);  // the other worker goes on
}

TEST_CASE("the API is safe from several threads, and shutdown() ends the waits of the others", "[failure][threads]") {
  Controller ctl = Controller::local(local_options(2));
  DeviceMesh m = ctl.mesh({{"w", 2}});
  // Threads issuing ops, fetching and syncing at once.
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Tensor x = full(m, {16}, static_cast<double>(t));
      for (int i = 0; i < 50; ++i) x = x + 1.0;
      if (at::equal(x.fetch({{"w", t % 2}}).get(60000ms), at::full({16}, t + 50.0))) ++good;
      ctl.sync(60000ms);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(good == 4);

  // A thread waits on a worker that is busy for long; shutdown() on this
  // one ends that wait with an error instead of leaving it blocked.
  post(ctl, 1, wire::Sleep{60000});
  std::atomic<bool> waiting{false};
  std::string error;
  std::thread waiter([&] {
    try {
      waiting = true;
      ctl.sync();
    } catch (const Error& e) {
      error = e.what();
    }
  });
  REQUIRE(eventually([&] { return waiting.load() && doing(ctl, 1, "sleep"); }, 10000ms));
  ctl.shutdown();
  waiter.join();
  CHECK_THAT(error, Catch::Contains("shut down"));
}
