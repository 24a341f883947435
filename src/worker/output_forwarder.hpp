// Forwarding an attached worker's stdout and stderr to its controller as
// Log messages, line by line (lines longer than kMaxLine in pieces). Each
// line also still goes where it went before, for the launcher's own logs.
// Locally spawned workers do not need it: their controller reads their
// pipes. The reading runs on the worker's I/O thread.
#pragma once

#include "transport/channel.hpp"
#include "wire/messages.hpp"

#include <asio/io_context.hpp>
#include <asio/posix/stream_descriptor.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

namespace cox::worker {

// Where fatal messages go: stderr, or the original stderr while output is
// forwarded (worker.cpp).
extern int diag_fd;

class OutputForwarder {
 public:
  static constexpr size_t kMaxLine = 16 * 1024;

  OutputForwarder(asio::io_context& io, transport::Channel& channel)
      : channel_(channel), streams_{Stream(io, 1, wire::Stream::kStdout), Stream(io, 2, wire::Stream::kStderr)} {}

  void start() {
    open_ = static_cast<int>(streams_.size());
    for (auto& st : streams_) {
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC) != 0) throw Error(std::string("pipe2 failed: ") + std::strerror(errno));
      st.saved = ::fcntl(st.fd, F_DUPFD_CLOEXEC, 3);
      std::fflush(st.fd == 1 ? stdout : stderr);
      ::dup2(fds[1], st.fd);
      ::close(fds[1]);
      st.pipe.assign(fds[0]);
      read(st);
    }
    diag_fd = streams_[1].saved;
  }

  // Puts stdout and stderr back and sends what is left (I/O thread must run).
  void finish(std::chrono::milliseconds timeout) {
    std::fflush(stdout);
    std::fflush(stderr);
    for (auto& st : streams_) ::dup2(st.saved, st.fd);  // closes the pipes' write ends: EOF
    diag_fd = 2;
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return open_ == 0; });
  }

 private:
  struct Stream {
    Stream(asio::io_context& io, int fd, wire::Stream kind) : fd(fd), kind(kind), pipe(io) {}
    int fd;
    wire::Stream kind;
    int saved = -1;
    asio::posix::stream_descriptor pipe;
    std::array<char, 4096> buf{};
    std::string partial;
  };

  void read(Stream& st) {
    st.pipe.async_read_some(asio::buffer(st.buf), [this, &st](const std::error_code& ec, size_t n) {
      if (n) {
        (void)!::write(st.saved, st.buf.data(), n);
        st.partial.append(st.buf.data(), n);
        size_t start = 0;
        for (size_t nl; (nl = st.partial.find('\n', start)) != std::string::npos; start = nl + 1) {
          for (; nl - start > kMaxLine; start += kMaxLine) send(st, std::string_view(st.partial).substr(start, kMaxLine));
          send(st, std::string_view(st.partial).substr(start, nl - start));
        }
        // A line without an end (a progress bar redrawn with \r) goes in pieces.
        for (; st.partial.size() - start > kMaxLine; start += kMaxLine) {
          send(st, std::string_view(st.partial).substr(start, kMaxLine));
        }
        st.partial.erase(0, start);
      }
      if (ec) {
        if (!st.partial.empty()) send(st, st.partial);
        st.partial.clear();
        std::error_code ignored;
        st.pipe.close(ignored);
        std::lock_guard<std::mutex> lk(mu_);
        --open_;
        cv_.notify_all();
        return;
      }
      read(st);
    });
  }
  void send(Stream& st, std::string_view line) {
    wire::Log log;
    log.stream = st.kind;
    log.line = std::string(line);
    frame_.clear();
    wire::encode_frame(log, frame_);
    channel_.send(frame_);
  }

  transport::Channel& channel_;
  std::array<Stream, 2> streams_;
  std::vector<uint8_t> frame_;
  std::mutex mu_;
  std::condition_variable cv_;
  int open_ = 0;
};

}  // namespace cox::worker
