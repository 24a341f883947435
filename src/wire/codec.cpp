// Out-of-line error paths of the codec, kept off the inlined fast path.
#include "wire/codec.hpp"

#include <fmt/format.h>

namespace cox::wire {

void Writer::put_string(std::string_view s) {
  if (s.size() > 0xffffffffu) {
    throw InvalidArgument(fmt::format("a string field of {} bytes does not fit the wire format (at most 2^32-1)",
                                      s.size()));
  }
  put<uint32_t>(static_cast<uint32_t>(s.size()));
  put_bytes(s.data(), s.size());
}

void Reader::truncated(size_t n, const char* field) const {
  throw ProtocolError(fmt::format("truncated {}: field '{}.{}' needs {} bytes at offset {}, but only {} remain", what_,
                                  what_, field, n, offset(), remaining()));
}

void Reader::too_many(uint32_t n, size_t elem, const char* field) const {
  throw ProtocolError(fmt::format("truncated {}: field '{}.{}' announces {} items of at least {} bytes at offset {}, "
                                  "but only {} bytes remain",
                                  what_, what_, field, n, elem, offset(), remaining()));
}

void Reader::invalid(const char* field, const std::string& why) const {
  throw ProtocolError(fmt::format("malformed {}: field '{}.{}' at offset {}: {}", what_, what_, field, offset(), why));
}

void Reader::expect_end() const {
  if (p_ != end_) {
    throw ProtocolError(fmt::format("malformed {}: {} trailing bytes after the last field (offset {} of {})",
                                    what_, remaining(), offset(), static_cast<size_t>(end_ - begin_)));
  }
}

std::string print_bytes(size_t n) { return fmt::format("<{} bytes>", n); }

}  // namespace cox::wire
