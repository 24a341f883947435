// The per-message path, measured against plain Asio over the same socket
// type in the same run.
//
//   round trip   controller -> worker -> controller (Coxswain: ping(), which
//                goes through the worker's ordered stream; raw: a blocking
//                Asio client and an Asio echo server process)
//   one-way      N small messages pipelined to W workers, then one round
//                trip to know they were all processed (Coxswain: post() +
//                sync(); raw: a client that packs frames into 64 KiB writes
//                in one buffer it reuses, servers that parse every frame)
//   bulk         one shard of S bytes, 64 MiB to 2 GiB (--quick: 64 and 256
//                MiB; --tiny: 1 and 4 MiB), from the controller to one
//                worker (cox::from_local, then sync) and back
//                (Tensor::fetch().get()); raw: this process and a server
//                process moving the same bytes over a Unix socket, as local
//                workers use, both ends with buffers allocated and touched
//                once (the socket's ceiling). Beside the rates: this
//                process's peak RSS during each Coxswain transfer and what
//                the transfer added to it (the peak is reset before each
//                one, so the raw side's buffers do not count).
//
// Both sides warm up alike, then take turns round by round (raw, Coxswain,
// raw, Coxswain, ...), so that drift in the machine's load hits both alike;
// each side reports the median of its rounds and the ratio is between the
// two medians of the same run. Neither side allocates per message.
//
//   attach       the same round trip, one-way stream and bulk transfers in
//                attach mode (TCP loopback, one worker), with the frames of
//                the session authenticated (tags, the default) beside the
//                same with tags off ($COX_BENCHMARK_UNTAGGED_TCP on both
//                ends), two controllers side by side taking turns: the cost
//                of authentication (bulk --tiny: 1 and 4 MiB, --quick: 64
//                and 256 MiB, else up to 1 GiB).
//
// A bulk size that fails (an error, or no progress within a generous limit:
// a stuck controller cannot be shut down, so it is left behind) is reported
// on its row, and the next size runs on a fresh controller; the benchmark
// fails at the end if a size below the default max_frame_bytes failed.
//
// Usage: messaging_bench [--quick | --tiny] [--json FILE]
#include <ATen/ATen.h>

#include <cox/controller.hpp>
#include <cox/tensor.hpp>

#include "bench_util.hpp"
#include "common/access.hpp"
#include "controller/controller_impl.hpp"
#include "controller/launcher.hpp"
#include "transport/session_mac.hpp"
#include "wire/messages.hpp"

#include <asio/connect.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <tuple>

extern char** environ;

using namespace cox;
using namespace cox::bench;
using local = asio::local::stream_protocol;

namespace {

// --- the plain Asio baseline -------------------------------------------------
// Frames as Coxswain's: u32 length, u8 type, payload. Types: 1 = echo it
// back, 2 = count it, 3 = reply with the count.

constexpr uint8_t kRawEcho = 1, kRawData = 2, kRawSync = 3;
constexpr size_t kRawFrame = 13;  // u32 length (9), u8 type, u64 payload

void put_raw_frame(uint8_t* at, uint8_t type, uint64_t payload) {
  const uint32_t len = kRawFrame - 4;
  std::memcpy(at, &len, 4);
  at[4] = type;
  std::memcpy(at + 5, &payload, 8);
}

// A raw server tells the benchmark that it listens with one byte on its
// stdout (a pipe), so the client connects once, without polling.
void signal_listening() {
  const char ready = 'r';
  if (::write(STDOUT_FILENO, &ready, 1) != 1) std::_Exit(1);
}

int raw_server(const std::string& path) {
  asio::io_context io;
  local::acceptor acc(io, local::endpoint(path));
  signal_listening();
  local::socket s(io);
  acc.accept(s);
  std::vector<uint8_t> buf(256 * 1024);
  size_t have = 0;
  uint64_t count = 0;
  for (;;) {
    std::error_code ec;
    size_t n = s.read_some(asio::buffer(buf.data() + have, buf.size() - have), ec);
    if (ec) return 0;
    have += n;
    size_t at = 0;
    while (have - at >= 4) {
      uint32_t len;
      std::memcpy(&len, buf.data() + at, 4);
      if (have - at - 4 < len) break;
      const uint8_t type = buf[at + 4];
      if (type == kRawEcho) {
        asio::write(s, asio::buffer(buf.data() + at, 4 + len));
      } else if (type == kRawSync) {
        uint8_t reply[kRawFrame];
        put_raw_frame(reply, kRawSync, count);
        asio::write(s, asio::buffer(reply));
      } else {
        ++count;
      }
      at += 4 + len;
    }
    std::memmove(buf.data(), buf.data() + at, have - at);
    have -= at;
  }
}

// Starts this binary with `args` (a raw server) and returns once it listens.
pid_t start_raw_server(std::vector<std::string> args) {
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, ready[1], STDOUT_FILENO);
  std::string self = "/proc/self/exe";
  std::vector<char*> argv{self.data()};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, self.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(ready[1]);
  if (rc != 0) {
    ::close(ready[0]);
    throw std::system_error(rc, std::generic_category(), "posix_spawn of a raw server");
  }
  pollfd p{ready[0], POLLIN, 0};
  char byte = 0;
  const bool up = ::poll(&p, 1, 30000) == 1 && ::read(ready[0], &byte, 1) == 1;
  ::close(ready[0]);
  if (!up) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw std::runtime_error("a raw server did not start listening within 30 s");
  }
  return pid;
}

std::string make_temp_dir() {
  char tmpl[] = "/tmp/cox-bench-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::system_error(errno, std::generic_category(), "mkdtemp");
  return tmpl;
}

struct RawPeers {
  asio::io_context io;
  std::string dir = make_temp_dir();
  std::vector<pid_t> pids;
  std::vector<local::socket> sockets;
  std::vector<uint8_t> batch;  // the one-way client's writes, reused
  uint64_t counted = 0;        // data frames each server has counted so far

  explicit RawPeers(int n) {
    try {
      for (int i = 0; i < n; ++i) {
        const std::string path = dir + "/s" + std::to_string(i);
        pids.push_back(start_raw_server({"--raw-server", path}));
        local::socket s(io);
        s.connect(local::endpoint(path));
        sockets.push_back(std::move(s));
      }
    } catch (...) {
      stop();
      throw;
    }
  }
  ~RawPeers() { stop(); }
  // Servers exit at the end of their stream.
  void stop() {
    for (auto& s : sockets) s.close();
    for (pid_t p : pids) ::waitpid(p, nullptr, 0);
    for (size_t i = 0; i < pids.size(); ++i) ::unlink((dir + "/s" + std::to_string(i)).c_str());
    pids.clear();
    ::rmdir(dir.c_str());
  }
};

void raw_round_trips(RawPeers& peers, int iters, std::vector<double>& us) {
  auto& s = peers.sockets[0];
  uint8_t frame[kRawFrame], reply[kRawFrame];
  for (int i = 0; i < iters; ++i) {
    put_raw_frame(frame, kRawEcho, static_cast<uint64_t>(i));
    auto t0 = Clock::now();
    asio::write(s, asio::buffer(frame));
    asio::read(s, asio::buffer(reply));
    us.push_back(seconds_since(t0) * 1e6);
  }
}

double raw_stream_msgs_per_s(RawPeers& peers, uint64_t n) {
  const size_t per_write = 64 * 1024 / kRawFrame;
  peers.batch.resize(per_write * kRawFrame);  // allocated on the first call only
  auto t0 = Clock::now();
  for (uint64_t i = 0; i < n;) {
    size_t k = 0;
    for (; k < per_write && i < n; ++k, ++i) put_raw_frame(peers.batch.data() + k * kRawFrame, kRawData, i);
    for (auto& s : peers.sockets) asio::write(s, asio::buffer(peers.batch.data(), k * kRawFrame));
  }
  uint8_t sync[kRawFrame], reply[kRawFrame];
  put_raw_frame(sync, kRawSync, 0);
  for (auto& s : peers.sockets) asio::write(s, asio::buffer(sync));
  for (auto& s : peers.sockets) {
    asio::read(s, asio::buffer(reply));
    uint64_t count;
    std::memcpy(&count, reply + 5, 8);
    if (count != peers.counted + n) throw std::runtime_error("raw server lost messages");
  }
  const double rate = static_cast<double>(n) / seconds_since(t0);
  peers.counted += n;
  return rate;
}

// --- bulk: the raw side -------------------------------------------------------
// The client sends a u8 op and a u64 size. 'P': `size` bytes follow, read
// into the server's buffer, then a one-byte ack. 'G': the server writes
// `size` bytes from its buffer.

constexpr uint8_t kBulkPut = 'P', kBulkGet = 'G';

int raw_bulk_server(const std::string& path, size_t max_bytes) {
  std::vector<uint8_t> buf(max_bytes, 1);  // touched once, here
  asio::io_context io;
  local::acceptor acc(io, local::endpoint(path));
  signal_listening();
  local::socket s(io);
  acc.accept(s);
  for (;;) {
    uint8_t head[9];
    std::error_code ec;
    asio::read(s, asio::buffer(head), ec);
    if (ec) return 0;
    uint64_t n;
    std::memcpy(&n, head + 1, 8);
    if (n > buf.size()) return 1;
    if (head[0] == kBulkPut) {
      asio::read(s, asio::buffer(buf.data(), n));
      const uint8_t ack = 1;
      asio::write(s, asio::buffer(&ack, 1));
    } else {
      asio::write(s, asio::buffer(buf.data(), n));
    }
  }
}

class RawBulk {
 public:
  explicit RawBulk(size_t max_bytes) : path_(dir_ + "/bulk") {
    pid_ = start_raw_server({"--raw-bulk-server", path_, std::to_string(max_bytes)});
    try {
      socket_.connect(local::endpoint(path_));
    } catch (...) {
      stop();
      throw;
    }
  }
  ~RawBulk() { stop(); }

  // Seconds to send `n` bytes from `data` and have the server acknowledge them.
  double put(const void* data, size_t n) {
    const auto head = header(kBulkPut, n);
    const auto t0 = Clock::now();
    asio::write(socket_, std::array<asio::const_buffer, 2>{asio::buffer(head), asio::buffer(data, n)});
    uint8_t ack;
    asio::read(socket_, asio::buffer(&ack, 1));
    return seconds_since(t0);
  }
  // Seconds to ask for `n` bytes and receive them into `into`.
  double get(void* into, size_t n) {
    const auto head = header(kBulkGet, n);
    const auto t0 = Clock::now();
    asio::write(socket_, asio::buffer(head));
    asio::read(socket_, asio::buffer(into, n));
    return seconds_since(t0);
  }

 private:
  static std::array<uint8_t, 9> header(uint8_t op, uint64_t n) {
    std::array<uint8_t, 9> h{op};
    std::memcpy(h.data() + 1, &n, 8);
    return h;
  }
  void stop() {
    socket_.close();  // the server exits at the end of its stream
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }

  asio::io_context io_;
  std::string dir_ = make_temp_dir();
  std::string path_;
  pid_t pid_ = -1;
  local::socket socket_{io_};
};

// This process's peak resident set: reset to the current RSS (Linux's
// clear_refs "5"), then read back as VmHWM from /proc/self/status.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

double status_mib(const char* field) {
  std::ifstream f("/proc/self/status");
  const std::string want = std::string(field) + ":";
  for (std::string line; std::getline(f, line);) {
    if (line.compare(0, want.size(), want) == 0) return std::stod(line.substr(want.size())) / 1024.0;  // kB
  }
  return 0;
}

// --- Coxswain ----------------------------------------------------------------

void cox_round_trips(Controller& ctl, int iters, std::vector<double>& us) {
  for (int i = 0; i < iters; ++i) us.push_back(std::chrono::duration<double, std::micro>(ctl.ping(0)).count());
}

double cox_stream_msgs_per_s(Controller& ctl, uint64_t n, uint64_t first) {
  auto& impl = *cox::detail::Access::impl(ctl);
  std::vector<uint8_t> frame;
  auto t0 = Clock::now();
  for (uint64_t i = 0; i < n; ++i) {
    frame.clear();
    wire::encode_frame(wire::Seq{first + i}, frame);  // encoded once, sent to every worker
    impl.post_all(frame);
  }
  ctl.sync();
  return static_cast<double>(n) / seconds_since(t0);
}

// One side's figures for one op at one size: seconds per round, and for
// Coxswain the peak RSS (MiB) during its transfers and the most one added.
struct BulkSide {
  std::vector<double> seconds;
  double peak_mib = 0, added_mib = 0;
};

// One Coxswain transfer: seconds, this process's peak RSS during it (reset
// first) and what it added over the RSS when it began.
struct Transfer {
  double seconds = 0, peak_mib = 0, added_mib = 0;
  bool peak_reset = false;
};

template <class F>
Transfer measure_transfer(F transfer) {
  Transfer t;
  t.peak_reset = reset_peak_rss();
  const double start = status_mib("VmRSS");
  const auto t0 = Clock::now();
  transfer();
  t.seconds = seconds_since(t0);
  t.peak_mib = status_mib("VmHWM");
  t.added_mib = t.peak_mib - start;
  return t;
}

// A transfer that did not finish within its limit.
struct Stuck : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs `f` on a thread of its own and returns its result; throws what it
// throws, or Stuck when it has not finished within `limit`. A stuck `f` is
// left running, so it must own (share) whatever it uses. Today a large
// frame can stall the runtime for good (its I/O thread waiting on the
// back-pressure of its own channel), and nothing then unwinds it.
Transfer run_within(std::chrono::milliseconds limit, std::function<Transfer()> f) {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Transfer result;
    std::exception_ptr error;
  };
  auto st = std::make_shared<State>();
  std::thread([st, f = std::move(f)] {
    Transfer r;
    std::exception_ptr e;
    try {
      r = f();
    } catch (...) {
      e = std::current_exception();
    }
    std::lock_guard<std::mutex> lk(st->mu);
    st->result = r;
    st->error = e;
    st->done = true;
    st->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lk(st->mu);
  if (!st->cv.wait_for(lk, limit, [&] { return st->done; })) {
    throw Stuck("no progress in " + std::to_string(limit.count() / 1000) + " s");
  }
  if (st->error) std::rethrow_exception(st->error);
  return st->result;
}

// Coxswain's side of the bulk row: a one-worker controller and its shard,
// shared with the threads that run its transfers.
struct CoxBulk {
  Controller ctl;
  DeviceMesh mesh;
  Tensor on_worker;
  explicit CoxBulk(Controller c) : ctl(std::move(c)), mesh(ctl.mesh({{"w", 1}})) {}
};

// Shuts a controller down after a failure, unless that is stuck too (then
// it is left behind: its worker exits when its heartbeats stop).
void abandon(std::shared_ptr<CoxBulk>& cox) {
  try {
    run_within(std::chrono::seconds(30), [c = std::move(cox)]() mutable {
      c.reset();
      return Transfer{};
    });
  } catch (const std::exception&) {
  }
}

// Returns false if a size below the controller's default frame limit failed.
bool bulk(const Options& cli, JsonRows& rows) {
  std::vector<size_t> sizes;
  if (cli.tiny) {
    sizes = {size_t{1} << 20, size_t{4} << 20};
  } else if (cli.quick) {
    sizes = {size_t{64} << 20, size_t{256} << 20};
  } else {
    for (size_t s = size_t{64} << 20; s <= size_t{2} << 30; s *= 2) sizes.push_back(s);
  }
  const int rounds = cli.tiny ? 2 : cli.quick ? 3 : 5;
  const size_t frame_limit = ControllerOptions{}.max_frame_bytes;
  RawBulk raw(sizes.back());
  std::shared_ptr<CoxBulk> cox;  // made again after a failure
  bool peak_reset = true, ok = true;

  std::printf("\nbulk: one shard to and from one worker; medians of %d rounds taken by turns\n", rounds);
  std::printf("%-10s %10s %12s %12s %7s %10s %12s\n", "op", "size", "coxswain", "raw asio", "ratio", "peak RSS",
              "RSS added");
  for (size_t bytes : sizes) {
    const std::string mib = std::to_string(bytes >> 20) + " MiB";
    // Generous: 30 s, plus 20 MB/s.
    const auto limit = std::chrono::milliseconds(30000 + bytes / 20000);
    BulkSide raw_put, raw_get, cox_put, cox_get;
    try {
      if (!cox) {
        ControllerOptions o;
        o.workers = 1;
        cox = std::make_shared<CoxBulk>(Controller::local(o));
      }
      const at::Tensor src = at::arange(static_cast<int64_t>(bytes / sizeof(float)), at::kFloat);
      auto raw_round = [&](bool timed) {
        const double put = raw.put(src.data_ptr(), bytes);
        // Into fresh memory, as a fetch must return a new tensor: its pages
        // are first touched by the transfer on both sides.
        std::unique_ptr<uint8_t[]> into(new uint8_t[bytes]);  // not touched before
        const double get = raw.get(into.get(), bytes);
        if (timed) {
          raw_put.seconds.push_back(put);
          raw_get.seconds.push_back(get);
        }
      };
      auto cox_round = [&](bool timed) {
        const Transfer put = run_within(limit, [cox, src, limit] {
          cox->on_worker = Tensor();  // the last round's shard is freed first
          cox->mesh.sync(limit);
          return measure_transfer([&] {
            cox->on_worker = from_local(cox->mesh, src);
            cox->mesh.sync(limit);
          });
        });
        const Transfer get = run_within(limit, [cox, src, limit, check = !timed] {
          at::Tensor back;
          const Transfer t = measure_transfer([&] { back = cox->on_worker.fetch(Coord{0}).get(limit); });
          if (check && !at::equal(back, src)) throw std::runtime_error("the fetched shard differs from the one sent");
          return t;
        });
        for (auto [side, t] : {std::pair<BulkSide*, const Transfer*>{&cox_put, &put}, {&cox_get, &get}}) {
          peak_reset = peak_reset && t->peak_reset;
          if (!timed) continue;
          side->seconds.push_back(t->seconds);
          side->peak_mib = std::max(side->peak_mib, t->peak_mib);
          side->added_mib = std::max(side->added_mib, t->added_mib);
        }
      };
      // Warm up alike (Coxswain's round also checks the bytes), then by turns.
      raw_round(false);
      cox_round(false);
      for (int r = 0; r < rounds; ++r) {
        raw_round(true);
        cox_round(true);
      }
    } catch (const std::exception& e) {
      const bool stuck = dynamic_cast<const Stuck*>(&e) != nullptr;
      const bool expected = bytes >= frame_limit;
      std::printf("%-10s %10s   failed: %s%s%s\n", "bulk", mib.c_str(), e.what(),
                  stuck ? " (the controller is stuck and left behind)" : "",
                  expected ? " (at or above the default max_frame_bytes)" : "");
      std::fflush(stdout);
      ok = ok && expected;
      abandon(cox);
      continue;
    }
    for (auto [op, side, raw_side] : {std::tuple<const char*, BulkSide*, BulkSide*>{"from_local", &cox_put, &raw_put},
                                      {"fetch", &cox_get, &raw_get}}) {
      const double gbs = bytes / stats(side->seconds).median / 1e9;
      const double raw_gbs = bytes / stats(raw_side->seconds).median / 1e9;
      std::printf("%-10s %10s %7.2f GB/s %7.2f GB/s %7.2f %6.0f MiB %8.0f MiB%s\n", op, mib.c_str(), gbs, raw_gbs,
                  gbs / raw_gbs, side->peak_mib, side->added_mib, peak_reset ? "" : " (peak not reset)");
      rows.add({{"bench", "messaging"}, {"case", std::string("bulk/") + op + "/bytes=" + std::to_string(bytes)},
                {"unit", "GB/s"}},
               {{"value", gbs}, {"baseline", raw_gbs}, {"ratio", gbs / raw_gbs}, {"bytes", double(bytes)},
                {"rounds", double(rounds)}, {"peak_rss_mib", side->peak_mib}, {"rss_added_mib", side->added_mib}});
    }
    std::fflush(stdout);
  }
  std::printf("bulk ratio: coxswain/raw rate (higher is better; the aim is >= 0.9). RSS added: the most one "
              "transfer raised this process's peak RSS over its RSS when it began (for fetch, the result "
              "tensor's S bytes included)\n");
  return ok;
}

// --- attach mode: authenticated sessions against untagged ones ---------------

// An attaching controller over TCP loopback and the one worker it waits
// for, which this process starts (and reaps).
struct Attached {
  std::unique_ptr<CoxBulk> cox;
  controller::Spawned worker;

  explicit Attached(bool tagged) {
    // Both ends must agree; the controller reads the variable when its
    // worker connects, which happens before attach() returns.
    if (!tagged) ::setenv(transport::kBenchmarkUntaggedEnv, "1", 1);
    ControllerOptions o;
    o.workers = 1;
    o.listen_host = "127.0.0.1";
    o.on_listening = [&](const AttachInfo& info) {
      worker = controller::spawn_process(
          controller::find_worker_binary(""),
          {"--connect", "127.0.0.1:" + std::to_string(info.port), "--rank", "0"},
          {{"COX_TOKEN", info.token}, {"COX_PARENT_PID", ""}, {transport::kBenchmarkUntaggedEnv, tagged ? "0" : "1"}});
    };
    try {
      cox = std::make_unique<CoxBulk>(Controller::attach(o));
    } catch (...) {
      ::unsetenv(transport::kBenchmarkUntaggedEnv);
      throw;
    }
    ::unsetenv(transport::kBenchmarkUntaggedEnv);
  }
  ~Attached() {
    cox.reset();  // shuts the worker down
    if (worker.pid <= 0) return;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    int status = 0;
    while (::waitpid(worker.pid, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(worker.pid, SIGKILL);
        ::waitpid(worker.pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));  // polling a child's exit
    }
    for (int fd : {worker.stdout_fd, worker.stderr_fd, worker.pidfd}) {
      if (fd >= 0) ::close(fd);
    }
  }
};

void attach_rows(const Options& cli, JsonRows& rows) {
  const int rt_iters = cli.tiny ? 200 : cli.quick ? 2000 : 10000;
  const uint64_t stream_n = cli.tiny ? 20000 : cli.quick ? 300000 : 2000000;
  constexpr int kRtRounds = 20, kStreamRounds = 5;
  std::vector<size_t> sizes;
  if (cli.tiny) {
    sizes = {size_t{1} << 20, size_t{4} << 20};
  } else if (cli.quick) {
    sizes = {size_t{64} << 20, size_t{256} << 20};
  } else {
    sizes = {size_t{64} << 20, size_t{256} << 20, size_t{1} << 30};
  }
  const int bulk_rounds = cli.tiny ? 2 : cli.quick ? 3 : 5;

  Attached tagged(true), untagged(false);
  std::printf("\nattach mode (TCP loopback, one worker): frames authenticated (tagged) against untagged, by turns\n");
  std::printf("%-10s %10s %14s %14s %8s\n", "test", "size", "tagged", "untagged", "ratio");
  auto row = [&](const std::string& name, const std::string& unit, double value, double baseline) {
    rows.add({{"bench", "messaging"}, {"case", "attach/" + name}, {"unit", unit}},
             {{"value", value}, {"baseline", baseline}, {"ratio", value / baseline}});
  };

  std::vector<double> t_us, u_us;
  cox_round_trips(tagged.cox->ctl, 200, t_us);
  cox_round_trips(untagged.cox->ctl, 200, u_us);
  t_us.clear();
  u_us.clear();
  for (int round = 0; round < kRtRounds; ++round) {
    cox_round_trips(untagged.cox->ctl, rt_iters / kRtRounds, u_us);
    cox_round_trips(tagged.cox->ctl, rt_iters / kRtRounds, t_us);
  }
  const double rt_t = stats(t_us).median, rt_u = stats(u_us).median;
  std::printf("%-10s %10s %11.1f us %11.1f us %8.2f\n", "roundtrip", "", rt_t, rt_u, rt_t / rt_u);
  row("roundtrip", "us", rt_t, rt_u);

  uint64_t seq = 0;
  const uint64_t per_round = stream_n / kStreamRounds;
  cox_stream_msgs_per_s(untagged.cox->ctl, per_round / 2, seq);
  cox_stream_msgs_per_s(tagged.cox->ctl, per_round / 2, seq);
  seq += per_round / 2;
  std::vector<double> t_rate, u_rate;
  for (int round = 0; round < kStreamRounds; ++round) {
    u_rate.push_back(cox_stream_msgs_per_s(untagged.cox->ctl, per_round, seq));
    t_rate.push_back(cox_stream_msgs_per_s(tagged.cox->ctl, per_round, seq));
    seq += per_round;
  }
  const double tp_t = stats(t_rate).median, tp_u = stats(u_rate).median;
  std::printf("%-10s %10s %9.2f M/s %9.2f M/s %8.2f\n", "one-way", "", tp_t / 1e6, tp_u / 1e6, tp_t / tp_u);
  row("one-way", "msgs/s", tp_t, tp_u);

  for (size_t bytes : sizes) {
    const std::string mib = std::to_string(bytes >> 20) + " MiB";
    const auto limit = std::chrono::milliseconds(30000 + bytes / 20000);
    const at::Tensor src = at::arange(static_cast<int64_t>(bytes / sizeof(float)), at::kFloat);
    std::vector<double> put[2], get[2];  // [0] tagged, [1] untagged
    auto round = [&](Attached& a, int side, bool timed) {
      CoxBulk& c = *a.cox;
      c.on_worker = Tensor();
      c.mesh.sync(limit);
      auto t0 = Clock::now();
      c.on_worker = from_local(c.mesh, src);
      c.mesh.sync(limit);
      const double p = seconds_since(t0);
      t0 = Clock::now();
      at::Tensor back = c.on_worker.fetch(Coord{0}).get(limit);
      const double g = seconds_since(t0);
      if (!timed && !at::equal(back, src)) throw std::runtime_error("the fetched shard differs from the one sent");
      if (timed) {
        put[side].push_back(p);
        get[side].push_back(g);
      }
    };
    round(untagged, 1, false);
    round(tagged, 0, false);
    for (int r = 0; r < bulk_rounds; ++r) {
      round(untagged, 1, true);
      round(tagged, 0, true);
    }
    for (auto [op, side] : {std::pair<const char*, std::vector<double>*>{"from_local", put}, {"fetch", get}}) {
      const double t = bytes / stats(side[0]).median / 1e9, u = bytes / stats(side[1]).median / 1e9;
      std::printf("%-10s %10s %9.2f GB/s %9.2f GB/s %8.2f\n", op, mib.c_str(), t, u, t / u);
      row(std::string(op) + "/bytes=" + std::to_string(bytes), "GB/s", t, u);
    }
    tagged.cox->on_worker = Tensor();
    untagged.cox->on_worker = Tensor();
    std::fflush(stdout);
  }
  std::printf("attach ratio: tagged/untagged (roundtrip: time, lower is better, the aim is <= 1.10; one-way and "
              "bulk: rate, higher is better, the aim for bulk is >= 0.8)\n");
}

}  // namespace

int run(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--raw-server") return raw_server(argv[2]);
  if (argc == 4 && std::string(argv[1]) == "--raw-bulk-server") return raw_bulk_server(argv[2], std::stoull(argv[3]));
  Options opts_cli;
  if (!parse_options(argc, argv, "messaging_bench", opts_cli)) return 2;
  const bool quick = opts_cli.quick;
  const std::string json = opts_cli.json;
  const int rt_iters = opts_cli.tiny ? 200 : quick ? 2000 : 10000;
  const uint64_t stream_n = opts_cli.tiny ? 20000 : quick ? 300000 : 2000000;
  constexpr int kRtRounds = 20, kStreamRounds = 5;
  JsonRows rows;

  std::printf("%-10s %8s %14s %14s %8s   (medians of rounds taken by turns)\n", "test", "workers", "coxswain",
              "raw asio", "ratio");
  for (int workers : opts_cli.tiny ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4}) {
    ControllerOptions opts;
    opts.workers = workers;
    Controller ctl = Controller::local(opts);
    RawPeers raw(workers);

    // Round trips: both warm up alike, then raw and Coxswain take turns.
    std::vector<double> raw_us, cox_us;
    raw_round_trips(raw, 200, raw_us);
    cox_round_trips(ctl, 200, cox_us);
    raw_us.clear();
    cox_us.clear();
    for (int round = 0; round < kRtRounds; ++round) {
      raw_round_trips(raw, rt_iters / kRtRounds, raw_us);
      cox_round_trips(ctl, rt_iters / kRtRounds, cox_us);
    }
    const double rt_raw = stats(raw_us).median;
    const double rt_cox = stats(cox_us).median;
    std::printf("%-10s %8d %11.1f us %11.1f us %8.2f\n", "roundtrip", workers, rt_cox, rt_raw, rt_cox / rt_raw);
    rows.add({{"bench", "messaging"}, {"case", "roundtrip/workers=" + std::to_string(workers)}, {"unit", "us"}},
             {{"value", rt_cox}, {"baseline", rt_raw}, {"ratio", rt_cox / rt_raw}, {"workers", double(workers)},
              {"rounds", double(kRtRounds)}});

    // One-way: the same, a rate per round.
    uint64_t seq = 0;
    const uint64_t per_round = stream_n / kStreamRounds;
    raw_stream_msgs_per_s(raw, per_round / 2);
    cox_stream_msgs_per_s(ctl, per_round / 2, seq);
    seq += per_round / 2;
    std::vector<double> raw_rate, cox_rate;
    for (int round = 0; round < kStreamRounds; ++round) {
      raw_rate.push_back(raw_stream_msgs_per_s(raw, per_round));
      cox_rate.push_back(cox_stream_msgs_per_s(ctl, per_round, seq));
      seq += per_round;
    }
    const double tp_raw = stats(raw_rate).median;
    const double tp_cox = stats(cox_rate).median;
    std::printf("%-10s %8d %9.2f M/s %9.2f M/s %8.2f\n", "one-way", workers, tp_cox / 1e6, tp_raw / 1e6,
                tp_cox / tp_raw);
    rows.add({{"bench", "messaging"}, {"case", "one-way/workers=" + std::to_string(workers)}, {"unit", "msgs/s"}},
             {{"value", tp_cox}, {"baseline", tp_raw}, {"ratio", tp_cox / tp_raw}, {"workers", double(workers)},
              {"rounds", double(kStreamRounds)}});
  }
  std::printf("roundtrip ratio: coxswain/raw time (lower is better); one-way ratio: coxswain/raw rate (higher is better)\n");
  const bool bulk_ok = bulk(opts_cli, rows);
  attach_rows(opts_cli, rows);
  if (!json.empty() && !rows.write(json)) {
    std::cerr << "cannot write " << json << "\n";
    return 1;
  }
  if (!bulk_ok) {
    std::cerr << "messaging_bench: a bulk transfer below the default max_frame_bytes failed\n";
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) { return guarded_main("messaging_bench", argc, argv, run); }
