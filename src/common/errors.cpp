// Out-of-line constructors of the exception types that carry fields.
#include <cox/errors.hpp>

#include <fmt/format.h>

namespace cox {
namespace {

std::string lost_message(int rank, const std::string& reason, const std::vector<std::string>& last) {
  std::string msg = fmt::format("worker {} lost: {}", rank, reason);
  if (!last.empty()) {
    msg += fmt::format("; its last {} line{} of stderr:", last.size(), last.size() == 1 ? "" : "s");
    for (const auto& line : last) {
      msg += "\n  ";
      msg += line;
    }
  }
  return msg;
}

}  // namespace

WorkerLost::WorkerLost(int rank, std::string reason, std::vector<std::string> last_output)
    : Error(lost_message(rank, reason, last_output)),
      rank_(rank),
      reason_(std::move(reason)),
      last_output_(std::move(last_output)) {}

RemoteError::RemoteError(int rank, std::string op, std::string message)
    : Error(fmt::format("{} failed on worker {}: {}", op, rank, message)),
      rank_(rank),
      op_(std::move(op)),
      message_(std::move(message)) {}

}  // namespace cox
