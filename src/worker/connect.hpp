// Reaching the controller: parsing --connect, connecting with retries until
// a deadline, and the worker's side of the handshake (transport/handshake).
// Runs on the worker's main thread before anything else starts.
#pragma once

#include "transport/session_mac.hpp"
#include "wire/messages.hpp"
#include "worker/worker.hpp"

#include <optional>
#include <string>

namespace cox::worker {

struct Session {
  int fd = -1;  // connected, authenticated, blocking
  wire::Welcome welcome;
  // Over TCP: the keys that tag every frame from here on (the Welcome's
  // tag already checked); none over a local Unix socket.
  std::optional<transport::SessionKeys> keys;
};

// Throws cox::Timeout when the controller cannot be reached in time, and
// cox::Error when it refuses this worker or fails to prove the token.
Session connect_and_handshake(const WorkerOptions& o, const std::string& token, const std::string& device);

// The address this worker's Gloo listens on: $COX_GLOO_HOSTNAME, else the
// local address of its connection to the controller (an interface its
// peers can most likely reach too), else loopback for a local controller.
std::string gloo_hostname(int control_fd);

}  // namespace cox::worker
