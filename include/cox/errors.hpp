// The exception family used by every part of Coxswain.
//
//   cox::Error                 base of everything Coxswain throws
//   ├ cox::InvalidArgument     the caller's mistake; the message names the bad value
//   ├ cox::WorkerLost          a worker exited, crashed, was killed or stopped answering
//   ├ cox::RemoteError         an operation failed on a worker
//   ├ cox::Timeout             a deadline passed
//   ├ cox::ProtocolError       a peer sent bytes that are not a valid message
//   └ cox::InternalError       a bug in Coxswain itself (a broken invariant)
#pragma once

#include <cox/export.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace cox {

class COX_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class COX_API InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& what) : Error(what) {}
};

// A worker is gone. `rank` is its rank in the controller's world; `reason`
// says how it went (exit code, signal, end of stream, missed heartbeats) and
// `last_output` holds the last lines it wrote to stderr, when known.
class COX_API WorkerLost : public Error {
 public:
  WorkerLost(int rank, std::string reason, std::vector<std::string> last_output = {});
  int rank() const noexcept { return rank_; }
  const std::string& reason() const noexcept { return reason_; }
  const std::vector<std::string>& last_output() const noexcept { return last_output_; }

 private:
  int rank_;
  std::string reason_;
  std::vector<std::string> last_output_;
};

// An operation failed on a worker: which rank, which operation, and the
// worker's own message.
class COX_API RemoteError : public Error {
 public:
  RemoteError(int rank, std::string op, std::string message);
  int rank() const noexcept { return rank_; }
  const std::string& op() const noexcept { return op_; }
  const std::string& message() const noexcept { return message_; }

 private:
  int rank_;
  std::string op_;
  std::string message_;
};

class COX_API Timeout : public Error {
 public:
  explicit Timeout(const std::string& what) : Error(what) {}
};

class COX_API ProtocolError : public Error {
 public:
  explicit ProtocolError(const std::string& what) : Error(what) {}
};

class COX_API InternalError : public Error {
 public:
  explicit InternalError(const std::string& what) : Error(what) {}
};

}  // namespace cox
