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
//
// Both sides warm up alike, then take turns round by round (raw, Coxswain,
// raw, Coxswain, ...), so that drift in the machine's load hits both alike;
// each side reports the median of its rounds and the ratio is between the
// two medians of the same run. Neither side allocates per message.
//
// Usage: messaging_bench [--quick | --tiny] [--json FILE]
#include <cox/controller.hpp>

#include "bench_util.hpp"
#include "controller/controller_impl.hpp"
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

#include <cerrno>
#include <cstring>
#include <iostream>
#include <system_error>

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

// --- Coxswain ----------------------------------------------------------------

void cox_round_trips(Controller& ctl, int iters, std::vector<double>& us) {
  for (int i = 0; i < iters; ++i) us.push_back(std::chrono::duration<double, std::micro>(ctl.ping(0)).count());
}

double cox_stream_msgs_per_s(Controller& ctl, uint64_t n, uint64_t first) {
  auto& impl = ctl.impl();
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

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--raw-server") return raw_server(argv[2]);
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
  if (!json.empty() && !rows.write(json)) {
    std::cerr << "cannot write " << json << "\n";
    return 1;
  }
  return 0;
}
