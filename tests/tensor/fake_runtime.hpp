// An in-process runtime for unit tests of the tensor engine: no processes,
// no sockets (as c10d's FakeProcessGroup stands in for a process group).
// It keeps every frame sent to each worker, answers requests through a
// function the test sets, and can lose a worker or shut down.
#pragma once

#include "controller/runtime.hpp"
#include "wire/messages.hpp"

#include <condition_variable>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <vector>

namespace cox::test {

// One frame as a worker would read it.
struct SentFrame {
  wire::MsgType type;
  std::vector<uint8_t> bytes;  // the payload after the type
  wire::FrameView view() const { return wire::FrameView{type, bytes.data(), bytes.size()}; }
  template <class M>
  M as() const {
    return wire::decode<M>(view());  // views into `bytes`: keep this frame alive
  }
};

class FakeRuntime final : public runtime::Runtime {
 public:
  using Answer = std::function<Reply(int rank, uint64_t request)>;

  explicit FakeRuntime(int workers) : streams_(static_cast<size_t>(workers)), lost_(static_cast<size_t>(workers)) {}
  ~FakeRuntime() override { shutdown(); }

  // --- for the test ---
  // Answers wait_reply() for requests without a queued reply (called
  // without the fake's lock held, so it may block).
  void set_answer(Answer a) {
    std::lock_guard<std::mutex> lk(mu_);
    answer_ = std::move(a);
  }
  void lose(int rank) {
    std::lock_guard<std::mutex> lk(mu_);
    lost_.at(static_cast<size_t>(rank)) = true;
  }
  void shutdown() {
    decltype(services_) services;
    {
      std::lock_guard<std::mutex> lk(mu_);
      services.swap(services_);
    }
    for (auto& [key, s] : services) s->on_shutdown();
  }
  // The frames sent to a worker since the last take, in order.
  std::vector<SentFrame> take(int rank) {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<uint8_t> bytes;
    bytes.swap(streams_.at(static_cast<size_t>(rank)));
    std::vector<SentFrame> out;
    wire::FrameScanner scanner(size_t{1} << 30);
    const size_t used = scanner.scan(bytes.data(), bytes.size(), [&](const wire::FrameView& f) {
      out.push_back({f.type, std::vector<uint8_t>(f.payload, f.payload + f.size)});
    });
    if (used != bytes.size()) throw ProtocolError("fake runtime: a partial frame was sent");
    return out;
  }
  // Frames of one type among `frames`.
  static std::vector<const SentFrame*> of_type(const std::vector<SentFrame>& frames, wire::MsgType t) {
    std::vector<const SentFrame*> out;
    for (const auto& f : frames) {
      if (f.type == t) out.push_back(&f);
    }
    return out;
  }
  std::vector<std::pair<uint64_t, std::vector<int>>> rendezvous() const {
    std::lock_guard<std::mutex> lk(mu_);
    return rendezvous_;
  }
  std::vector<uint64_t> forgotten() const {
    std::lock_guard<std::mutex> lk(mu_);
    return forgotten_;
  }
  int syncs() const {
    std::lock_guard<std::mutex> lk(mu_);
    return syncs_;
  }

  // --- runtime::Runtime ---
  int size() const noexcept override { return static_cast<int>(streams_.size()); }
  const ControllerOptions& options() const noexcept override { return options_; }
  std::string device(int) const override { return "cpu"; }
  std::string host(int) const override { return ""; }
  std::vector<int> lost_workers() const override {
    std::lock_guard<std::mutex> lk(mu_);
    std::vector<int> out;
    for (size_t r = 0; r < lost_.size(); ++r) {
      if (lost_[r]) out.push_back(static_cast<int>(r));
    }
    return out;
  }
  void make_room(const std::vector<int>& ranks, const char*) override {
    std::lock_guard<std::mutex> lk(mu_);
    for (int r : ranks) check_locked(r);
  }
  void send(const Send* sends, size_t n) override {
    std::lock_guard<std::mutex> lk(mu_);
    for (size_t i = 0; i < n; ++i) {
      check_locked(sends[i].rank);
      auto& s = streams_[static_cast<size_t>(sends[i].rank)];
      s.insert(s.end(), sends[i].data, sends[i].data + sends[i].size);
    }
  }
  void post_now(int rank, const std::vector<uint8_t>& frame) override {
    const Send s{rank, frame.data(), frame.size()};
    send(&s, 1);
  }
  uint64_t post_tensor(int rank, const wire::Put& put, const uint8_t* data, std::shared_ptr<const void>) override {
    std::vector<uint8_t> frames = wire::encode_frame(put);
    wire::append_chunks(frames, wire::MsgType::kPutData, put.id, data, put.nbytes, options_.max_frame_bytes);
    post_now(rank, frames);
    return 0;
  }
  void wait_sent(int, uint64_t, const char*) override {}
  void sync_ranks(const std::vector<int>& ranks, std::optional<runtime::Millis>) override {
    std::lock_guard<std::mutex> lk(mu_);
    for (int r : ranks) check_locked(r);
    ++syncs_;
  }
  void error_delivered(uint64_t value) noexcept override {
    std::lock_guard<std::mutex> lk(mu_);
    delivered_.push_back(value);
  }
  uint64_t new_request_id() override {
    std::lock_guard<std::mutex> lk(mu_);
    return ++next_request_;
  }
  // A reply is taken once, as from the real runtime: a second wait for the
  // same request is a bug in the caller.
  Reply wait_reply(int rank, uint64_t request, std::optional<runtime::Millis>) override {
    Answer answer;
    {
      std::lock_guard<std::mutex> lk(mu_);
      check_locked(rank);
      if (!taken_.insert(request).second) {
        throw InternalError("fake runtime: the reply to request " + std::to_string(request) + " was already taken");
      }
      answer = answer_;
    }
    if (!answer) throw Timeout("fake runtime: no answer for request " + std::to_string(request));
    return answer(rank, request);
  }
  void forget(int, uint64_t request) noexcept override {
    std::lock_guard<std::mutex> lk(mu_);
    forgotten_.push_back(request);
  }
  void await_loss(const std::vector<int>& ranks, runtime::Millis) override {
    std::lock_guard<std::mutex> lk(mu_);
    for (int r : ranks) check_locked(r);
  }
  void expect_rendezvous(uint64_t comm, const std::vector<int>& ranks) override {
    std::lock_guard<std::mutex> lk(mu_);
    rendezvous_.emplace_back(comm, ranks);
  }
  void fail_rendezvous(uint64_t, const std::string&) override {}
  std::shared_ptr<runtime::Service> service(std::string_view key,
                                            const std::function<std::shared_ptr<runtime::Service>()>& make) override {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = services_.find(std::string(key));
    if (it == services_.end()) it = services_.emplace(std::string(key), make()).first;
    return it->second;
  }

 private:
  void check_locked(int rank) const {
    if (rank < 0 || rank >= size()) throw InvalidArgument("fake runtime: no worker " + std::to_string(rank));
    if (lost_[static_cast<size_t>(rank)]) throw WorkerLost(rank, "lost (fake runtime)");
  }

  mutable std::mutex mu_;
  ControllerOptions options_;
  std::vector<std::vector<uint8_t>> streams_;
  std::vector<bool> lost_;
  Answer answer_;
  uint64_t next_request_ = 0;
  int syncs_ = 0;
  std::vector<uint64_t> forgotten_;
  std::vector<uint64_t> delivered_;
  std::set<uint64_t> taken_;
  std::vector<std::pair<uint64_t, std::vector<int>>> rendezvous_;
  std::map<std::string, std::shared_ptr<runtime::Service>> services_;
};

}  // namespace cox::test
