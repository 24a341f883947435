// The errors workers reported since the last sync, less those a fetch has
// already delivered.
//
// Identity: a failure is reported by every worker that ran the failing op,
// each report naming the error value it made (wire::Error::value: the id of
// the op's first output, the same on every worker). Fetching any shard of a
// value that carries that failure (the op's output, or anything computed
// from it) throws RemoteError for it and marks the failure delivered, for
// every rank: its reports, those already in and those still coming, are not
// raised again by sync. A report with no error value (an op with no output
// to mark, backward, a barrier) can only be delivered by sync.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <unordered_set>
#include <utility>

namespace cox {

class ReportedErrors {
 public:
  // A worker's report of a failure that made error value `value` (0: none).
  void add(uint64_t value, std::exception_ptr error) {
    if (value != 0 && delivered_.count(value)) return;  // a fetch raised it already
    if (reports_.size() < kMaxReports) reports_.emplace_back(value, std::move(error));
  }
  // A fetch raised the failure of error value `value`.
  void delivered(uint64_t value) {
    if (value == 0) return;
    for (auto it = reports_.begin(); it != reports_.end();) {
      it = it->first == value ? reports_.erase(it) : std::next(it);
    }
    // Remembered for the reports of slower ranks; bounded (oldest first).
    if (delivered_.insert(value).second) {
      order_.push_back(value);
      if (order_.size() > kMaxDelivered) {
        delivered_.erase(order_.front());
        order_.pop_front();
      }
    }
  }
  bool any() const noexcept { return !reports_.empty(); }
  // The first report not delivered, or null; the others go with it (sync
  // raises one error per call, as before).
  std::exception_ptr take() {
    if (reports_.empty()) return nullptr;
    std::exception_ptr e = reports_.front().second;
    reports_.clear();
    return e;
  }

 private:
  static constexpr size_t kMaxReports = 1024;
  static constexpr size_t kMaxDelivered = 4096;
  std::deque<std::pair<uint64_t, std::exception_ptr>> reports_;
  std::unordered_set<uint64_t> delivered_;
  std::deque<uint64_t> order_;
};

}  // namespace cox
