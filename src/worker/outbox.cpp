// Streaming a fetched tensor to the controller.
#include "worker/outbox.hpp"

#include "wire/meta.hpp"

#include <fmt/format.h>

#include <memory>

namespace cox::worker {

namespace {
// A tensor this small is copied into the queue: nothing to hold or wait for.
constexpr uint64_t kCopyBytes = uint64_t{1} << 20;
}  // namespace

void Outbox::send_tensor(uint64_t request, const at::Tensor& host, Hold hold) {
  wire::FetchReply head;
  head.request = request;
  head.meta = wire::Meta::of(host).to_wire();
  head.nbytes = host.nbytes();
  const auto* data = static_cast<const uint8_t*>(host.data_ptr());
  const size_t chunk = wire::chunk_bytes(channel_.max_frame());
  if (head.nbytes <= kCopyBytes) {
    std::vector<uint8_t> frames = wire::encode_frame(head);
    wire::append_chunks(frames, wire::MsgType::kFetchData, request, data, head.nbytes, channel_.max_frame());
    channel_.send(frames);
    return;
  }
  auto keep = std::make_shared<const at::Tensor>(host);
  uint64_t pos = channel_.send(wire::encode_frame(head));
  for (uint64_t off = 0; off < head.nbytes; off += chunk) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(chunk, head.nbytes - off));
    std::array<uint8_t, wire::kChunkOverhead> h;
    wire::chunk_header(h, wire::MsgType::kFetchData, request, off, k);
    pos = channel_.send_borrowed(h.data(), h.size(), data + off, k, keep);
  }
  if (hold == Hold::kBorrow) return;
  // Wait while the controller makes progress; a controller that reads
  // nothing for stall_timeout is gone.
  uint64_t seen = channel_.written();
  for (;;) {
    switch (channel_.wait_written(pos, std::chrono::steady_clock::now() + stall_timeout_)) {
      case transport::Channel::Wait::kOk: return;
      case transport::Channel::Wait::kClosed: throw Error("the connection closed while a fetch was being sent");
      case transport::Channel::Wait::kTimeout: break;
    }
    const uint64_t now = channel_.written();
    if (now == seen) {
      throw Error(fmt::format("the controller read nothing of a fetch reply for {} ms ({} bytes pending)",
                              stall_timeout_.count(), channel_.pending()));
    }
    seen = now;
  }
}

}  // namespace cox::worker
