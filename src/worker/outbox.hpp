// The worker's replies to its controller: typed messages on the data lane
// of its channel, and tensors streamed in chunks within the frame limit.
//
// Any thread may send (the executor, a GPU's completion thread); sending
// never blocks. send_tensor() with Hold::kWait is for the executor only: it
// returns once the tensor is written, and fails (cox::Error: the worker
// then exits) when the controller reads nothing for `stall_timeout`.
#pragma once

#include "transport/channel.hpp"
#include "wire/messages.hpp"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <vector>

namespace cox::worker {

class Outbox {
 public:
  Outbox(transport::Channel& channel, std::chrono::milliseconds stall_timeout)
      : channel_(channel), stall_timeout_(stall_timeout) {}

  template <class M>
  void send(const M& m) {
    channel_.send(wire::encode_frame(m));
  }
  // Written at once when nothing is queued (executor thread: it reuses a
  // buffer): for replies someone is waiting on.
  template <class M>
  void send_now(const M& m) {
    buf_.clear();
    wire::encode_frame(m, buf_);
    channel_.send_now(buf_);
  }

  // Ahead of any reply being streamed (within the frame limit; else in
  // order with the rest): for what the controller must not wait behind
  // data for, such as a rendezvous blob.
  template <class M>
  void send_control(const M& m) {
    const auto frame = wire::encode_frame(m);
    if (frame.size() - wire::kFrameHeaderBytes <= channel_.max_frame()) {
      channel_.send_control(frame);
    } else {
      channel_.send(frame);
    }
  }

  enum class Hold {
    kBorrow,  // the tensor is this fetch's own: its memory is kept until written
    kWait,    // others may change it: return only once it is written
  };
  // A FetchReply for `request` and `host` (contiguous, on the CPU), then its
  // bytes in FetchData chunks.
  void send_tensor(uint64_t request, const at::Tensor& host, Hold hold);

  transport::Channel& channel() noexcept { return channel_; }

 private:
  transport::Channel& channel_;
  const std::chrono::milliseconds stall_timeout_;
  std::vector<uint8_t> buf_;
};

}  // namespace cox::worker
