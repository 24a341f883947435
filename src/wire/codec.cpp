// Out-of-line error paths of the codec, kept off the inlined fast path.
#include "wire/codec.hpp"

#include <fmt/format.h>

namespace cox::wire {

void Reader::truncated(size_t n, const char* field) const {
  throw ProtocolError(fmt::format("truncated {}: field '{}' needs {} bytes at offset {}, but only {} remain",
                                  what_, field, n, offset(), remaining()));
}

void Reader::expect_end() const {
  if (p_ != end_) {
    throw ProtocolError(fmt::format("malformed {}: {} trailing bytes after the last field (offset {} of {})",
                                    what_, remaining(), offset(), static_cast<size_t>(end_ - begin_)));
  }
}

}  // namespace cox::wire
