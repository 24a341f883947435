// Reaching the controller: parsing --connect, connecting with retries until
// a deadline, and the worker's side of the handshake (transport/handshake).
// Runs on the worker's main thread before anything else starts.
#pragma once

#include "transport/session_mac.hpp"
#include "wire/messages.hpp"
#include "worker/worker.hpp"

#include <optional>
#include <string>
#include <vector>

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

// The address this worker's Gloo listens on for a group whose members'
// hosts, as the controller sees them, are `hosts` (empty: a local worker):
// $COX_GLOO_HOSTNAME when set; else, when a member is on another host, the
// address of the interface that routes to it (never loopback); else the
// local address of the connection to the controller, or loopback for a
// local controller. Throws collectives::CommError, naming the peer and
// $COX_GLOO_HOSTNAME, when no interface routes to a member's host.
std::string gloo_hostname(int control_fd, const std::vector<std::string>& hosts);
// The address of the local interface that routes to `host` (no traffic
// is sent); throws collectives::CommError when none does.
std::string route_to(const std::string& host);

}  // namespace cox::worker
