// Several hosts, simulated with network namespaces on a bridge that this
// test creates and removes (root only: it exits 77 elsewhere). The
// controller and worker 0 run in this process's namespace (worker 0 reaches
// the controller over loopback); workers 1 and 2 run in namespaces of their
// own. A link "cut" sets a host's end of its cable down: nothing is closed,
// nothing is reset, packets just stop, as in a network split. Traffic goes
// only to loopback and to the bridge's addresses.
#include "runtime/test_util.hpp"

#include <cox/collectives.hpp>
#include <cox/tensor.hpp>

#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <optional>

using namespace cox;
using namespace cox::test;

namespace {

std::string last_failed;  // the last command that failed, for the skip message

// Runs a command; returns its exit status.
int sh(const std::string& cmd) {
  const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  const int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  if (status != 0) last_failed = cmd;
  return status;
}

struct SkipUnlessRoot {
  SkipUnlessRoot() {
    if (::geteuid() != 0) {
      std::printf("skipped: simulating hosts with network namespaces needs root\n");
      std::exit(77);
    }
    if (sh("ip netns list") != 0) {
      std::printf("skipped: 'ip netns' is not available (install iproute2)\n");
      std::exit(77);
    }
  }
} skip_unless_root;

// A bridge in this namespace with `hosts` namespaces cabled to it.
int next_hosts = 0;

struct Hosts {
  // Names and addresses of their own, per process and per test.
  std::string id = std::to_string(::getpid() % 10000) + std::to_string(next_hosts++ % 10);
  std::string subnet = "10.213." + std::to_string(20 + ::getpid() % 200);
  std::string bridge = "cxb" + id;
  int hosts;

  explicit Hosts(int n) : hosts(n) {
    teardown();
    bool ok = sh("ip link add " + bridge + " type bridge") == 0 &&
              sh("ip addr add " + here() + "/24 dev " + bridge) == 0 && sh("ip link set " + bridge + " up") == 0;
    for (int h = 1; ok && h <= n; ++h) {
      ok = sh("ip netns add " + ns(h)) == 0 &&
           sh("ip link add " + cable(h) + " type veth peer name eth0 netns " + ns(h)) == 0 &&
           sh("ip link set " + cable(h) + " master " + bridge + " up") == 0 &&
           sh("ip -n " + ns(h) + " addr add " + addr(h) + "/24 dev eth0") == 0 &&
           sh("ip -n " + ns(h) + " link set eth0 up") == 0 && sh("ip -n " + ns(h) + " link set lo up") == 0;
    }
    if (!ok) {
      const std::string failed = last_failed;
      teardown();
      std::printf("skipped: cannot create network namespaces and a bridge here ('%s' failed)\n", failed.c_str());
      std::exit(77);
    }
  }
  ~Hosts() { teardown(); }
  void teardown() {
    // A namespace goes away lazily; its cable is removed now.
    for (int h = 1; h <= hosts; ++h) sh("ip link del " + cable(h));
    for (int h = 1; h <= hosts; ++h) sh("ip netns del " + ns(h));
    sh("ip link del " + bridge);
  }

  std::string ns(int h) const { return "cox-" + id + "-h" + std::to_string(h); }
  std::string cable(int h) const { return "cxv" + id + "h" + std::to_string(h); }
  std::string addr(int h) const { return subnet + "." + std::to_string(10 + h); }
  std::string here() const { return subnet + ".1"; }
  // Packets to and from host h stop; nothing is closed or reset.
  void cut(int h) const { REQUIRE(sh("ip link set " + cable(h) + " down") == 0); }
};

// Worker 0 here over loopback; worker r >= 1 on host r.
struct Cluster {
  Hosts& hosts;
  std::vector<Proc> procs;
  std::optional<Controller> ctl;

  Cluster(Hosts& h, int workers, ControllerOptions o) : hosts(h) {
    o.workers = workers;
    o.listen_host = "0.0.0.0";  // loopback for worker 0, the bridge for the rest
    o.startup_timeout = 30000ms;
    o.output_sink = [](int, OutputStream, std::string_view) {};
    o.on_listening = [&](const AttachInfo& info) {
      const std::string port = std::to_string(info.port);
      std::vector<std::pair<std::string, std::string>> env = {{"COX_TOKEN", info.token}, {"COX_PARENT_PID", ""}};
      for (int r = 0; r < workers; ++r) {
        Proc p;
        if (r == 0) {
          p = start_worker("127.0.0.1:" + port, 0, {{"COX_TOKEN", info.token}});
        } else {
          p.s = controller::spawn_process("/usr/sbin/ip",
                                          {"netns", "exec", hosts.ns(r), worker_binary(), "--connect",
                                           hosts.here() + ":" + port, "--rank", std::to_string(r),
                                           "--connect-timeout-ms", "10000"},
                                          env);
        }
        procs.push_back(std::move(p));
      }
    };
    ctl.emplace(Controller::attach(o));
  }
  ~Cluster() {
    ctl.reset();
    for (auto& p : procs) p.finish(15000ms);
  }
};

ControllerOptions fast_failure() {
  ControllerOptions o;
  o.heartbeat_interval = 100ms;
  o.heartbeat_timeout = 1500ms;
  // Far beyond every wait below: only the loss itself may end them.
  o.collective_timeout = std::chrono::minutes(10);
  return o;
}

bool busy_with(const WorkerStatus& s, const std::string& what) {
  return s.state == WorkerStatus::State::kBusy && s.doing == what;
}

}  // namespace

TEST_CASE("a worker that reached its controller over loopback advertises an address its remote peers reach",
          "[multihost]") {
  Hosts hosts(2);
  ControllerOptions o;
  o.collective_timeout = 20000ms;  // a wrong address would fail here, not hang
  Cluster c(hosts, 3, o);
  DeviceMesh m = c.ctl->mesh({{"x", 3}});
  Tensor y = all_reduce(ones(m, {1024}));
  for (int64_t r : {0, 1, 2}) CHECK(at::equal(y.fetch({{"x", r}}).get(60000ms), at::full({1024}, 3.0)));
}

TEST_CASE("a link cut during a collective: survivors get WorkerLost, the cut-off worker exits", "[multihost][lost]") {
  Hosts hosts(2);
  Cluster c(hosts, 3, fast_failure());
  Controller& ctl = *c.ctl;
  DeviceMesh m = ctl.mesh({{"x", 3}});
  Tensor x = ones(m, {1 << 12});
  REQUIRE(all_reduce(x).fetch({{"x", 0}}).get(60000ms)[0].item<float>() == 3.0f);
  // Worker 2 is busy, so workers 0 and 1 enter the collective and wait for
  // it; while they do, its link goes down. When its sleep ends it enters
  // the collective too, cut off.
  post(ctl, 2, wire::Sleep{4000});
  Tensor y = all_reduce(x);
  REQUIRE(eventually([&] {
    const auto s = ctl.status();
    return busy_with(s[0], "collective all_reduce") && busy_with(s[1], "collective all_reduce") &&
           busy_with(s[2], "sleep") && s[2].busy_for < 2500ms;
  }, 20000ms));
  hosts.cut(2);
  for (int64_t r : {0, 1}) {
    try {
      y.fetch({{"x", r}}).get(30000ms);
      FAIL("expected WorkerLost");
    } catch (const WorkerLost& e) {
      CHECK(e.rank() == 2);
    }
  }
  // The group without it keeps working.
  CHECK(all_reduce(ones(m.slice("x", 0, 2), {4})).fetch({{"x", 1}}).get(30000ms)[0].item<float>() == 2.0f);
  // The cut-off worker hears nothing from its controller and exits by itself.
  Proc& p2 = c.procs[2];
  p2.finish(20000ms);
  INFO(p2.err);
  CHECK(p2.exited_with(1));
  CHECK_THAT(p2.err, Catch::Contains("no message from the controller"));
}

TEST_CASE("a link cut during a transfer ends the transfer with WorkerLost", "[multihost][lost]") {
  Hosts hosts(2);
  ControllerOptions o = fast_failure();
  o.send_buffer_bytes = size_t{8} << 20;
  Cluster c(hosts, 3, o);
  Controller& ctl = *c.ctl;
  DeviceMesh m = ctl.mesh({{"x", 3}});
  ctl.sync(30000ms);
  // The worker reads nothing for a while, so the transfer is still in
  // flight (and pending here) when its link goes down.
  post(ctl, 2, wire::Sleep{4000});
  std::atomic<bool> lost{false};
  std::exception_ptr other;
  std::thread sender([&] {
    try {
      Tensor t = from_local(m.slice("x", 2, 3), at::ones({int64_t{64} << 20}));
      t.fetch({{"x", 0}}).get(30000ms);
    } catch (const WorkerLost& e) {
      lost = e.rank() == 2;
    } catch (...) {
      other = std::current_exception();
    }
  });
  const bool pending = eventually([&] { return impl_of(ctl).pending_bytes(2) > 0; }, 20000ms);
  hosts.cut(2);
  sender.join();
  REQUIRE(pending);
  if (other) std::rethrow_exception(other);
  CHECK(lost);
  CHECK(ctl.ping(1, 10000ms) > std::chrono::nanoseconds(0));
}

TEST_CASE("a link cut while idle: the worker is lost and exits by itself", "[multihost][lost]") {
  Hosts hosts(1);
  Cluster c(hosts, 2, fast_failure());
  Controller& ctl = *c.ctl;
  ctl.sync(30000ms);
  hosts.cut(1);
  try {
    ctl.sync(30000ms);
    FAIL("expected WorkerLost");
  } catch (const WorkerLost& e) {
    CHECK(e.rank() == 1);
    CHECK_THAT(e.what(), Catch::Contains("no message or heartbeat"));
  }
  Proc& p1 = c.procs[1];
  p1.finish(20000ms);
  INFO(p1.err);
  CHECK(p1.exited_with(1));
  CHECK_THAT(p1.err, Catch::Contains("no message from the controller"));
  CHECK(ctl.ping(0, 10000ms) > std::chrono::nanoseconds(0));
}
