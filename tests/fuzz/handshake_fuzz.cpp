// Fuzz target for the handshake (transport/handshake): both sans-I/O state
// machines fed frames, and the worker's blocking driver fed a byte stream.
// Whatever arrives must end in a verdict, an accepted session, or a
// cox::Error (ProtocolError, Timeout included): never a crash.
//
// Input: a mode byte, a parameter byte, then frames.
//   mode % 3 == 0  the controller checks each frame as a HelloReply
//                  (world size: the parameter);
//   mode % 3 == 1  a worker (rank: the parameter) answers the first frame
//                  as a Hello and takes the second as its Welcome;
//   mode % 3 == 2  handshake_as_worker() reads the bytes from a socket.
// Bit 0x80 of the mode: the harness, which knows the token, signs a frame
// that decodes (a HelloReply's or Welcome's mac) so that the checks after
// authentication are reached too.
#include "fuzz/fuzz_common.hpp"

#include "transport/auth.hpp"
#include "transport/handshake.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <optional>

namespace {

using namespace cox;
using namespace cox::wire;

const std::string kToken = "fuzz-token";

// The frame's payload with its mac replaced by the right one, when it
// decodes as M.
template <class M, class Sign>
std::optional<std::vector<uint8_t>> signed_copy(const FrameView& f, Sign&& sign) {
  if (f.type != Traits<M>::type) return std::nullopt;
  M m;
  try {
    m = decode<M>(f);
  } catch (const ProtocolError&) {
    return std::nullopt;
  }
  sign(m);
  return encode_frame(m);
}

FrameView view_of(const std::vector<uint8_t>& frame) {
  return FrameView{static_cast<MsgType>(frame[kFrameHeaderBytes]), frame.data() + kFrameHeaderBytes + 1,
                   frame.size() - kFrameHeaderBytes - 1};
}

void as_controller(const std::vector<FrameView>& frames, int world_size, bool sign) {
  transport::ControllerHandshake hs(kToken);
  const Hello hello = decode<Hello>(view_of(hs.hello()));
  for (const FrameView& f : frames) {
    std::optional<std::vector<uint8_t>> fixed;
    if (sign) {
      fixed = signed_copy<HelloReply>(f, [&](HelloReply& r) { r.mac = transport::prove(kToken, "worker", hello.nonce, r.rank); });
    }
    const auto v = hs.check(fixed ? view_of(*fixed) : f, world_size);
    if (v.ok) {
      transport::ControllerHandshake::Session s;
      s.world_size = world_size;
      s.heartbeat_interval_ms = 10;
      s.heartbeat_timeout_ms = 100;
      s.max_frame = kMinMaxFrame;
      (void)hs.welcome(v.reply, s);
    } else if (v.tell_peer) {
      (void)transport::ControllerHandshake::reject(v.reason);
    }
  }
}

void as_worker(const std::vector<FrameView>& frames, int rank, bool sign) {
  if (frames.empty()) return;
  transport::WorkerHandshake hs(kToken, rank, "cpu");
  std::vector<uint8_t> reply;
  try {
    reply = hs.on_hello(frames[0]);
  } catch (const cox::Error&) {
    return;
  }
  const HelloReply mine = decode<HelloReply>(view_of(reply));
  for (size_t i = 1; i < frames.size(); ++i) {
    std::optional<std::vector<uint8_t>> fixed;
    if (sign) {
      fixed = signed_copy<Welcome>(frames[i], [&](Welcome& w) { w.mac = transport::prove(kToken, "controller", mine.nonce, rank); });
    }
    try {
      (void)hs.on_welcome(fixed ? view_of(*fixed) : frames[i]);
    } catch (const cox::Error&) {
    }
  }
}

void blocking_worker(const uint8_t* data, size_t n, int rank) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return;
  // Small inputs fit the socket buffer: written whole, then the end.
  const ssize_t w = ::write(fds[1], data, n);
  (void)w;
  ::shutdown(fds[1], SHUT_WR);
  try {
    (void)transport::handshake_as_worker(fds[0], kToken, rank, "cpu", std::chrono::milliseconds(200));
  } catch (const cox::Error&) {
  }
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace

COX_FUZZ_FRAME_MUTATOR(2)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2 || size > 64 * 1024) return 0;
  const uint8_t mode = data[0];
  const int param = data[1];
  const bool sign = (mode & 0x80) != 0;
  if (mode % 3 == 2) {
    blocking_worker(data + 2, size - 2, param);
    return 0;
  }
  // Frames as the handshake reads them: no more than kMaxHandshakeFrame each.
  std::vector<FrameView> frames;
  try {
    FrameScanner(kMaxHandshakeFrame).scan(data + 2, size - 2, [&](const FrameView& f) { frames.push_back(f); });
  } catch (const ProtocolError&) {
  }
  if (mode % 3 == 0) {
    as_controller(frames, param, sign);
  } else {
    as_worker(frames, param, sign);
  }
  return 0;
}

// Seeds: a HelloReply and a Welcome, each signed and not, and the stream a
// blocking worker reads.
int cox_fuzz_write_seeds(const std::filesystem::path& dir) {
  HelloReply r;
  r.rank = 1;
  r.device = "cpu";
  Welcome w;
  w.world_size = 4;
  w.heartbeat_interval_ms = 100;
  w.heartbeat_timeout_ms = 1000;
  w.max_frame = 1 << 20;
  const auto hello = encode_frame(Hello{});
  auto welcome = encode_frame(w);
  auto both = hello;
  both.insert(both.end(), welcome.begin(), welcome.end());
  auto rejected = hello;
  const auto reject = encode_frame(Reject{"no"});
  rejected.insert(rejected.end(), reject.begin(), reject.end());
  using cox::fuzz::write_seed;
  write_seed(dir, "controller", {0, 4}, encode_frame(r));
  write_seed(dir, "controller_signed", {0x81, 4}, encode_frame(r));  // 0x81 % 3 == 0
  write_seed(dir, "worker", {1, 1}, both);
  write_seed(dir, "worker_signed", {0x82, 1}, both);  // 0x82 % 3 == 1
  write_seed(dir, "worker_rejected", {1, 1}, rejected);
  write_seed(dir, "blocking", {2, 1}, both);
  return 6;
}
