// The controller and local workers as real processes: spawn, sync, errors,
// ordering, output, supervision and shutdown.
#include "runtime/test_util.hpp"

#include <catch2/catch.hpp>

#include <sys/prctl.h>

#include <atomic>
#include <fstream>
#include <sstream>

using namespace cox;
using namespace cox::test;

TEST_CASE("spawn, sync and shut down 1, 2 and 4 workers", "[controller]") {
  const int n = GENERATE(1, 2, 4);
  std::vector<int64_t> pids;
  {
    Controller ctl = Controller::local(local_options(n));
    REQUIRE(ctl.size() == n);
    for (int r = 0; r < n; ++r) {
      pids.push_back(ctl.worker_pid(r));
      REQUIRE(process_exists(pids.back()));
    }
    ctl.sync();
    for (int r = 0; r < n; ++r) REQUIRE(ctl.ping(r) > std::chrono::nanoseconds(0));
    ctl.shutdown();
    ctl.shutdown();  // idempotent
    REQUIRE(ctl.lost_workers().empty());
  }
  // Reaped: no zombie, no orphan.
  for (auto pid : pids) REQUIRE_FALSE(process_exists(pid));
}

TEST_CASE("the destructor stops and reaps workers, also when unwinding", "[controller]") {
  std::vector<int64_t> pids;
  try {
    Controller ctl = Controller::local(local_options(2));
    pids = {ctl.worker_pid(0), ctl.worker_pid(1)};
    throw std::runtime_error("user code failed");
  } catch (const std::runtime_error&) {
  }
  for (auto pid : pids) REQUIRE_FALSE(process_exists(pid));
}

TEST_CASE("a moved-from controller is inert and the moved-to one owns the workers", "[controller]") {
  Controller a = Controller::local(local_options(1));
  const auto pid = a.worker_pid(0);
  Controller b = std::move(a);
  b.sync();
  b = Controller::local(local_options(1));  // the old workers are shut down
  REQUIRE_FALSE(process_exists(pid));
  b.sync();
}

TEST_CASE("sync rethrows the first remote error once, naming rank and op", "[controller][errors]") {
  Controller ctl = Controller::local(local_options(3));
  post(ctl, 1, wire::Raise{"first failure"});
  // Worker 2 fails only once worker 1's error is in.
  REQUIRE(eventually([&] { return impl_of(ctl).has_remote_error(); }));
  post(ctl, 2, wire::Raise{"second failure"});
  try {
    ctl.sync();
    FAIL("sync should have thrown");
  } catch (const RemoteError& e) {
    REQUIRE(e.rank() == 1);
    REQUIRE(e.op() == "raise");
    REQUIRE(e.message() == "first failure");
    REQUIRE(std::string(e.what()) == "raise failed on worker 1: first failure");
  }
  ctl.sync();  // reported once; the workers carry on
}

TEST_CASE("messages arrive in order under load", "[controller][order]") {
  const int n = GENERATE(1, 4);
  Controller ctl = Controller::local(local_options(n));
  auto& impl = impl_of(ctl);
  std::vector<uint8_t> frame;
  const uint64_t total = 300000;
  for (uint64_t i = 0; i < total; ++i) {
    frame.clear();
    wire::encode_frame(wire::Seq{i}, frame);
    impl.post_all(frame);
    if (i % 20000 == 0) {
      // Large messages in between force partial writes and buffer growth.
      wire::Echo big;
      big.id = 0;
      big.payload.assign(3 << 20, 'p');
      frame.clear();
      wire::encode_frame(big, frame);
      impl.post_all(frame);
    }
    if (i % 100000 == 99999) ctl.sync();
  }
  ctl.sync();  // a sequence error on any worker would throw here

  // And the check itself works: a gap is reported.
  post(ctl, n - 1, wire::Seq{total + 5});
  REQUIRE_THROWS_WITH(ctl.sync(), Catch::Contains("sequence number 300005 arrived where 300000 was expected"));
}

TEST_CASE("worker output reaches the sink line by line with its rank", "[controller][output]") {
  CapturedOutput out;
  auto opts = local_options(2);
  opts.output_sink = out.sink();
  Controller ctl = Controller::local(opts);
  post(ctl, 0, wire::Print{wire::Stream::kStdout, "hello from zero"});
  post(ctl, 1, wire::Print{wire::Stream::kStderr, "warning from one\nsecond line"});
  ctl.sync();
  REQUIRE(eventually([&] { return out.has(1, OutputStream::kStderr, "second line"); }));
  REQUIRE(out.has(0, OutputStream::kStdout, "hello from zero"));
  REQUIRE(out.has(1, OutputStream::kStderr, "warning from one"));
}

TEST_CASE("a worker that exits is WorkerLost with its code and last stderr lines", "[controller][supervision]") {
  CapturedOutput out;
  auto opts = local_options(2);
  opts.output_sink = out.sink();
  Controller ctl = Controller::local(opts);
  post(ctl, 1, wire::Print{wire::Stream::kStderr, "dying words"});
  post(ctl, 1, wire::Exit{3});
  try {
    ctl.sync();
    FAIL("sync should have thrown");
  } catch (const WorkerLost& e) {
    REQUIRE(e.rank() == 1);
    REQUIRE_THAT(e.reason(), Catch::Contains("exited with code 3"));
    REQUIRE(std::find(e.last_output().begin(), e.last_output().end(), "dying words") != e.last_output().end());
    REQUIRE_THAT(e.what(), Catch::Contains("worker 1 lost") && Catch::Contains("dying words"));
  }
  // Every later call that needs it fails the same way; the others still work.
  REQUIRE_THROWS_AS(ctl.ping(1), WorkerLost);
  REQUIRE_THROWS_AS(post(ctl, 1, wire::Seq{0}), WorkerLost);
  REQUIRE_THROWS_AS(ctl.sync(), WorkerLost);
  REQUIRE(ctl.ping(0) > std::chrono::nanoseconds(0));
  REQUIRE(ctl.lost_workers() == std::vector<int>{1});
}

TEST_CASE("a worker SIGKILLed while the controller waits ends the wait with WorkerLost", "[controller][supervision]") {
  Controller ctl = Controller::local(local_options(2));
  post(ctl, 1, wire::Sleep{30000});
  const auto pid = ctl.worker_pid(1);
  std::thread killer([pid] {
    std::this_thread::sleep_for(200ms);
    ::kill(static_cast<pid_t>(pid), SIGKILL);
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    ctl.sync();
    FAIL("sync should have thrown");
  } catch (const WorkerLost& e) {
    REQUIRE(e.rank() == 1);
    REQUIRE_THAT(e.reason(), Catch::Contains("killed by signal 9"));
  }
  killer.join();
  REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
  REQUIRE_FALSE(process_exists(pid));  // reaped
}

TEST_CASE("a hung worker is lost after the heartbeat timeout", "[controller][supervision]") {
  auto opts = local_options(1);
  opts.heartbeat_interval = 100ms;
  opts.heartbeat_timeout = 600ms;
  Controller ctl = Controller::local(opts);
  const auto pid = ctl.worker_pid(0);
  ::kill(static_cast<pid_t>(pid), SIGSTOP);  // alive, but silent
  const auto t0 = std::chrono::steady_clock::now();
  try {
    ctl.sync(10000ms);
    FAIL("sync should have thrown");
  } catch (const WorkerLost& e) {
    REQUIRE(e.rank() == 0);
    REQUIRE_THAT(e.reason(), Catch::Contains("no message or heartbeat"));
  }
  REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
  REQUIRE(eventually([&] { return !process_exists(pid); }));  // killed and reaped
}

TEST_CASE("sync and ping with a deadline throw Timeout naming the ranks behind", "[controller][errors]") {
  Controller ctl = Controller::local(local_options(3));
  post(ctl, 2, wire::Sleep{1500});
  REQUIRE_THROWS_WITH(ctl.sync(100ms), Catch::Contains("worker [2] did not finish within 100 ms"));
  REQUIRE_THROWS_AS(ctl.ping(2, 50ms), Timeout);
  ctl.sync();
}

TEST_CASE("start-up fails fast when a worker cannot start", "[controller][errors]") {
  auto opts = local_options(2);
  opts.worker_path = "/bin/false";
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Controller::local(opts);
    FAIL("start-up should have failed");
  } catch (const WorkerLost& e) {
    REQUIRE_THAT(e.reason(), Catch::Contains("exited with code 1"));
  }
  REQUIRE(std::chrono::steady_clock::now() - t0 < 10s);
}

TEST_CASE("bad options are InvalidArgument naming the value", "[controller][errors]") {
  auto opts = local_options(-1);
  REQUIRE_THROWS_WITH(Controller::local(opts), Catch::Contains("workers must be positive (or 0: one per GPU), got -1"));
  opts = local_options(1);
  opts.device = "tpu";
  REQUIRE_THROWS_WITH(Controller::local(opts), Catch::Contains("must be auto, cuda or cpu, got 'tpu'"));
  if (Controller::local(local_options(1)).device(0) == "cpu") {
    // No GPU here: asking for one says so.
    opts.device = "cuda";
    REQUIRE_THROWS_WITH(Controller::local(opts), Catch::Contains("no GPU is visible"));
    opts = local_options(1);
    opts.gpus = {0};
    REQUIRE_THROWS_WITH(Controller::local(opts), Catch::Contains("gpus names GPUs, but none is visible"));
    // workers 0 on the CPU: one worker.
    REQUIRE(Controller::local(local_options(0)).size() == 1);
  }
  opts = local_options(1);
  opts.worker_path = "/nonexistent/cox-worker";
  REQUIRE_THROWS_WITH(Controller::local(opts), Catch::Contains("'/nonexistent/cox-worker' is not an executable"));
  opts = local_options(1);
  opts.heartbeat_timeout = 500ms;
  opts.heartbeat_interval = 1000ms;
  REQUIRE_THROWS_AS(Controller::local(opts), InvalidArgument);
  Controller ctl = Controller::local(local_options(1));
  REQUIRE_THROWS_WITH(ctl.ping(5), Catch::Contains("worker rank 5 out of range for 1 workers"));
}

TEST_CASE("a SIGKILLed controller leaves no worker behind", "[controller][supervision]") {
  // Orphans re-parent to this process, so it can see (and reap) them.
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(fds[0]);
    try {
      Controller ctl = Controller::local(local_options(3));
      std::string pids;
      for (int r = 0; r < 3; ++r) pids += std::to_string(ctl.worker_pid(r)) + " ";
      pids += "\n";
      (void)!::write(fds[1], pids.data(), pids.size());
      ::pause();
    } catch (...) {
    }
    std::_Exit(1);
  }
  ::close(fds[1]);
  std::string text;
  char buf[256];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
    text.append(buf, static_cast<size_t>(n));
    if (text.find('\n') != std::string::npos) break;
  }
  ::close(fds[0]);
  std::vector<pid_t> workers;
  std::istringstream in(text);
  for (pid_t p; in >> p;) workers.push_back(p);
  REQUIRE(workers.size() == 3);
  REQUIRE(::kill(child, SIGKILL) == 0);
  int status;
  REQUIRE(::waitpid(child, &status, 0) == child);
  // Each worker dies (parent-death signal) and comes to us to be reaped.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  size_t reaped = 0;
  while (reaped < workers.size() && std::chrono::steady_clock::now() < deadline) {
    pid_t p = ::waitpid(-1, &status, WNOHANG);
    if (p > 0 && std::find(workers.begin(), workers.end(), p) != workers.end()) ++reaped;
    if (p <= 0) std::this_thread::sleep_for(10ms);
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
  REQUIRE(reaped == workers.size());
}
