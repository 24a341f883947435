// The per-message path, measured against plain Asio over the same socket
// type in the same run.
//
//   round trip   controller -> worker -> controller (Coxswain: ping(), which
//                goes through the worker's ordered stream; raw: a blocking
//                Asio client and an Asio echo server process)
//   one-way      N small messages pipelined to W workers, then one round
//                trip to know they were all processed (Coxswain: post() +
//                sync(); raw: a client that packs frames into 64 KiB writes,
//                servers that parse every frame)
//
// Usage: messaging_bench [--quick] [--json FILE]
#include <cox/controller.hpp>

#include "bench_util.hpp"
#include "controller/controller_impl.hpp"
#include "wire/messages.hpp"

#include <asio/connect.hpp>
#include <asio/io_context.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <iostream>
#include <thread>

extern char** environ;

using namespace cox;
using namespace cox::bench;
using local = asio::local::stream_protocol;

namespace {

// --- the plain Asio baseline -------------------------------------------------
// Frames as Coxswain's: u32 length, u8 type, payload. Types: 1 = echo it
// back, 2 = count it, 3 = reply with the count.

constexpr uint8_t kRawEcho = 1, kRawData = 2, kRawSync = 3;

int raw_server(const std::string& path) {
  asio::io_context io;
  local::acceptor acc(io, local::endpoint(path));
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
        uint8_t reply[13] = {9, 0, 0, 0, kRawSync};
        std::memcpy(reply + 5, &count, 8);
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

struct RawPeers {
  asio::io_context io;
  std::vector<local::socket> sockets;
  std::vector<pid_t> pids;
  std::string dir;

  explicit RawPeers(int n) {
    char tmpl[] = "/tmp/cox-bench-XXXXXX";
    dir = ::mkdtemp(tmpl);
    char self[PATH_MAX];
    ssize_t len = ::readlink("/proc/self/exe", self, sizeof self - 1);
    self[len] = 0;
    for (int i = 0; i < n; ++i) {
      std::string path = dir + "/s" + std::to_string(i);
      std::string flag = "--raw-server";
      char* argv[] = {self, flag.data(), path.data(), nullptr};
      pid_t pid;
      ::posix_spawn(&pid, self, nullptr, nullptr, argv, environ);
      pids.push_back(pid);
      local::socket s(io);
      for (int tries = 0;; ++tries) {
        std::error_code ec;
        s.connect(local::endpoint(path), ec);
        if (!ec) break;
        if (tries > 2000) throw std::runtime_error("raw server did not start");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      sockets.push_back(std::move(s));
    }
  }
  ~RawPeers() {
    for (auto& s : sockets) s.close();
    for (pid_t p : pids) ::waitpid(p, nullptr, 0);
    for (size_t i = 0; i < pids.size(); ++i) ::unlink((dir + "/s" + std::to_string(i)).c_str());
    ::rmdir(dir.c_str());
  }
};

std::vector<uint8_t> raw_frame(uint8_t type, uint64_t payload) {
  std::vector<uint8_t> f(13);
  uint32_t len = 9;
  std::memcpy(f.data(), &len, 4);
  f[4] = type;
  std::memcpy(f.data() + 5, &payload, 8);
  return f;
}

void raw_round_trips(RawPeers& peers, int iters, std::vector<double>& us) {
  auto& s = peers.sockets[0];
  uint8_t reply[13];
  for (int i = 0; i < iters; ++i) {
    auto f = raw_frame(kRawEcho, static_cast<uint64_t>(i));
    auto t0 = Clock::now();
    asio::write(s, asio::buffer(f));
    asio::read(s, asio::buffer(reply));
    us.push_back(seconds_since(t0) * 1e6);
  }
}

double raw_stream_msgs_per_s(RawPeers& peers, uint64_t n) {
  std::vector<uint8_t> batch;
  const size_t per_write = 64 * 1024 / 13;
  auto t0 = Clock::now();
  for (uint64_t i = 0; i < n;) {
    batch.clear();
    for (size_t k = 0; k < per_write && i < n; ++k, ++i) {
      auto f = raw_frame(kRawData, i);
      batch.insert(batch.end(), f.begin(), f.end());
    }
    for (auto& s : peers.sockets) asio::write(s, asio::buffer(batch));
  }
  uint8_t reply[13];
  for (auto& s : peers.sockets) asio::write(s, asio::buffer(raw_frame(kRawSync, 0)));
  for (auto& s : peers.sockets) {
    asio::read(s, asio::buffer(reply));
    uint64_t count;
    std::memcpy(&count, reply + 5, 8);
    if (count < n) throw std::runtime_error("raw server lost messages");
  }
  return static_cast<double>(n) / seconds_since(t0);
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
  JsonRows rows;

  std::printf("%-10s %8s %14s %14s %8s\n", "test", "workers", "coxswain", "raw asio", "ratio");
  for (int workers : opts_cli.tiny ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4}) {
    ControllerOptions opts;
    opts.workers = workers;
    Controller ctl = Controller::local(opts);
    RawPeers raw(workers);

    // Warm up both, then alternate in rounds so that drift in the machine's
    // load hits both alike; report the medians.
    std::vector<double> raw_us, cox_us;
    cox_round_trips(ctl, 200, cox_us);
    raw_round_trips(raw, 200, raw_us);
    raw_us.clear();
    cox_us.clear();
    for (int round = 0; round < 20; ++round) {
      raw_round_trips(raw, rt_iters / 20, raw_us);
      cox_round_trips(ctl, rt_iters / 20, cox_us);
    }
    const double rt_raw = stats(raw_us).median;
    const double rt_cox = stats(cox_us).median;
    std::printf("%-10s %8d %11.1f us %11.1f us %8.2f\n", "roundtrip", workers, rt_cox, rt_raw, rt_cox / rt_raw);
    rows.add({{"bench", "messaging"}, {"case", "roundtrip/workers=" + std::to_string(workers)}, {"unit", "us"}},
             {{"value", rt_cox}, {"baseline", rt_raw}, {"ratio", rt_cox / rt_raw}, {"workers", double(workers)}});

    cox_stream_msgs_per_s(ctl, stream_n / 10, 0);
    const double tp_raw = raw_stream_msgs_per_s(raw, stream_n);
    const double tp_cox = cox_stream_msgs_per_s(ctl, stream_n, stream_n / 10);
    std::printf("%-10s %8d %9.2f M/s %9.2f M/s %8.2f\n", "one-way", workers, tp_cox / 1e6, tp_raw / 1e6,
                tp_cox / tp_raw);
    rows.add({{"bench", "messaging"}, {"case", "one-way/workers=" + std::to_string(workers)}, {"unit", "msgs/s"}},
             {{"value", tp_cox}, {"baseline", tp_raw}, {"ratio", tp_cox / tp_raw}, {"workers", double(workers)}});
  }
  std::printf("roundtrip ratio: coxswain/raw time (lower is better); one-way ratio: coxswain/raw rate (higher is better)\n");
  if (!json.empty() && !rows.write(json)) {
    std::cerr << "cannot write " << json << "\n";
    return 1;
  }
  return 0;
}
