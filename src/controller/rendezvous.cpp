// The controller as the rendezvous of communicators: members send their
// blobs (Gloo addresses, NCCL unique ids), and once every member has, each
// gets them all. Any thread registers a rendezvous; the I/O thread collects.
#include "controller/controller_impl.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace cox {

void Controller::Impl::expect_rendezvous(uint64_t comm, const std::vector<int>& ranks) {
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    Rendezvous& r = rendezvous_[comm];
    r.ranks = ranks;
    r.blobs.assign(ranks.size(), std::nullopt);
    for (int rank : ranks) {
      if (workers_[static_cast<size_t>(rank)]->lost) {
        fail_rendezvous_locked(comm, fmt::format("worker {} is lost", rank), out);
        break;
      }
    }
  }
  send_replies(out);
}

void Controller::Impl::fail_rendezvous(uint64_t comm, const std::string& why) {
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    fail_rendezvous_locked(comm, why, out);
  }
  send_replies(out);
}

void Controller::Impl::fail_rendezvous_locked(uint64_t comm, const std::string& why,
                                              std::vector<std::pair<int, std::vector<uint8_t>>>& out) {
  auto it = rendezvous_.find(comm);
  if (it == rendezvous_.end() || !it->second.failed.empty()) return;
  Rendezvous& r = it->second;
  r.failed = why;
  wire::RendezvousReply reply;
  reply.comm = comm;
  reply.ok = false;
  reply.error = why;
  const auto frame = wire::encode_frame(reply);
  // Those who are waiting hear now; the rest when they arrive.
  for (size_t i = 0; i < r.ranks.size(); ++i) {
    if (r.blobs[i]) out.emplace_back(r.ranks[i], frame);
  }
}

void Controller::Impl::send_replies(std::vector<std::pair<int, std::vector<uint8_t>>>& out) {
  for (auto& [rank, frame] : out) {
    Worker& w = *workers_[static_cast<size_t>(rank)];
    if (!w.channel || w.lost_flag.load()) continue;
    // A member waits for this while its stream backs up behind it: the
    // control lane, unless it is too large for one frame.
    if (frame.size() - wire::kFrameHeaderBytes <= w.channel->max_frame()) {
      w.channel->send_control(frame);
    } else {
      w.channel->send(frame);
    }
  }
}

void Controller::Impl::on_rendezvous(Worker& w, const wire::Rendezvous& m) {
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = rendezvous_.find(m.comm);
    if (it == rendezvous_.end()) {
      throw ProtocolError(fmt::format("worker {} joined communicator {}, which is not being set up", w.rank, m.comm));
    }
    Rendezvous& r = it->second;
    const auto me = std::find(r.ranks.begin(), r.ranks.end(), w.rank);
    if (me == r.ranks.end() || r.blobs[static_cast<size_t>(me - r.ranks.begin())]) {
      throw ProtocolError(fmt::format("worker {} joined communicator {} as a member it is not", w.rank, m.comm));
    }
    auto& slot = r.blobs[static_cast<size_t>(me - r.ranks.begin())];
    slot = m.blob;
    ++r.have;
    if (!r.failed.empty()) {
      wire::RendezvousReply reply;
      reply.comm = m.comm;
      reply.ok = false;
      reply.error = r.failed;
      out.emplace_back(w.rank, wire::encode_frame(reply));
      if (r.have == r.ranks.size()) rendezvous_.erase(it);
    } else if (r.have == r.ranks.size()) {
      wire::RendezvousReply reply;
      reply.comm = m.comm;
      for (auto& b : r.blobs) reply.blobs.push_back(std::move(*b));
      const auto frame = wire::encode_frame(reply);
      for (int rank : r.ranks) out.emplace_back(rank, frame);
      rendezvous_.erase(it);
    }
  }
  send_replies(out);
}


}  // namespace cox
