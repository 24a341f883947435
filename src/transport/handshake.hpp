// The handshake, both sides, in one place.
//
//   controller -> worker   Hello      magic, protocol version, a challenge
//   worker -> controller   HelloReply rank, device, HMAC proof of the token
//                                     over the challenge, its own challenge
//   controller -> worker   Welcome    its proof over the worker's challenge,
//                                     session parameters
//                          (or Reject, with the reason)
//
// Over TCP (attach mode) the session is authenticated from the Welcome on:
// it is the controller's first tagged frame, and every frame after it in
// both directions carries a tag (transport/session_mac.hpp) keyed by the
// token and both challenges.
//
// ControllerHandshake and WorkerHandshake are the protocol without I/O: they
// build and check frames. The controller drives its side from its I/O thread
// (controller/acceptor.cpp); workers, and tests that play a worker, drive
// theirs with handshake_as_worker(), which blocks on a socket with a
// deadline.
#pragma once

#include "transport/session_mac.hpp"
#include "wire/messages.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace cox::transport {

class ControllerHandshake {
 public:
  explicit ControllerHandshake(std::string token);

  // The first frame, to send at once.
  const std::vector<uint8_t>& hello() const noexcept { return hello_; }

  struct Verdict {
    bool ok = false;
    wire::HelloReply reply;  // ok: the worker's, authenticated
    std::string reason;      // not ok: why
    bool tell_peer = false;  // not ok: whether the peer has earned a Reject (it proved the token)
  };
  // Checks the worker's answer (a whole frame, at most kMaxHandshakeFrame).
  Verdict check(const wire::FrameView& f, int world_size) const;

  struct Session {
    int32_t world_size = 0;
    uint32_t heartbeat_interval_ms = 0;
    uint32_t heartbeat_timeout_ms = 0;
    uint64_t max_frame = 0;
  };
  // The Welcome for an accepted worker.
  std::vector<uint8_t> welcome(const wire::HelloReply& reply, const Session& s) const;
  static std::vector<uint8_t> reject(const std::string& reason);
  // The controller's session keys with an accepted worker.
  SessionKeys session_keys(const wire::HelloReply& reply) const;

 private:
  std::string token_;
  wire::Nonce nonce_;
  std::vector<uint8_t> hello_;
};

class WorkerHandshake {
 public:
  WorkerHandshake(std::string token, int32_t rank, std::string device);
  // The reply to the controller's Hello; throws cox::Error when it is not a
  // Coxswain controller of this protocol version.
  std::vector<uint8_t> on_hello(const wire::FrameView& f);
  // The session, once the controller has proved the token; throws cox::Error
  // for a Reject or a failed proof.
  wire::Welcome on_welcome(const wire::FrameView& f) const;
  // The worker's session keys (after on_hello).
  SessionKeys session_keys() const;

 private:
  std::string token_;
  int32_t rank_;
  std::string device_;
  wire::Nonce nonce_{};
  wire::Nonce controller_nonce_{};
};

struct WorkerSession {
  wire::Welcome welcome;
  // Set when the session is authenticated (session_authenticated(fd)); the
  // Welcome's tag has been checked, so recv_seq is 1.
  std::optional<SessionKeys> keys;
};

// The worker's side over a connected, blocking socket, within `timeout`.
// Throws cox::Timeout, cox::ProtocolError or cox::Error.
WorkerSession handshake_as_worker(int fd, const std::string& token, int32_t rank, const std::string& device,
                                  std::chrono::milliseconds timeout);

}  // namespace cox::transport
