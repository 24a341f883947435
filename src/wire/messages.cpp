// What the message list yields out of line: names, validation, printing,
// the frame scanner's errors, and putting fragments back together.
#include "wire/messages.hpp"

#include <fmt/format.h>

namespace cox::wire {

const char* to_string(MsgType t) noexcept {
  switch (t) {
#define COX_WIRE_NAME(Name, id, dir, str) \
  case MsgType::k##Name:                  \
    return str;
    COX_WIRE_MESSAGES(COX_WIRE_NAME)
#undef COX_WIRE_NAME
  }
  return "unknown";
}

namespace {
struct KnownTypes {
  bool known[256] = {};
  KnownTypes() {
#define COX_WIRE_KNOWN(Name, id, dir, str) known[id] = true;
    COX_WIRE_MESSAGES(COX_WIRE_KNOWN)
#undef COX_WIRE_KNOWN
  }
};
const KnownTypes kKnownTypes;

const char* to_string(Dir d) {
  switch (d) {
    case Dir::kHandshake: return "the handshake";
    case Dir::kTransport: return "the transport";
    case Dir::kToWorker: return "a worker";
    case Dir::kToController: return "the controller";
    case Dir::kBoth: return "either side";
  }
  return "?";
}

Dir receiver_of(MsgType t) {
  switch (t) {
#define COX_WIRE_DIR(Name, id, dir, str) \
  case MsgType::k##Name:                 \
    return Dir::dir;
    COX_WIRE_MESSAGES(COX_WIRE_DIR)
#undef COX_WIRE_DIR
  }
  return Dir::kTransport;
}
}  // namespace

bool is_known_type(uint8_t t) noexcept { return kKnownTypes.known[t]; }

void frame_too_long(MsgType t, uint64_t len) {
  throw InvalidArgument(fmt::format("a {} message of {} bytes does not fit one frame (at most 2^32-1 bytes)",
                                    to_string(t), len));
}

void wrong_type(MsgType expected, MsgType got) {
  throw ProtocolError(fmt::format("expected a {} message, got {}", to_string(expected), to_string(got)));
}

void not_for(MsgType t, Dir receiver) {
  if (!is_known_type(static_cast<uint8_t>(t))) {
    throw ProtocolError(fmt::format("unknown message type {}", static_cast<unsigned>(t)));
  }
  throw ProtocolError(fmt::format("a {} message is for {}, not {}", to_string(t), to_string(receiver_of(t)),
                                  to_string(receiver)));
}

void FrameScanner::bad_header(uint32_t len, const uint8_t* data, size_t n, size_t at) const {
  if (len == 0) throw ProtocolError(fmt::format("malformed frame at byte {}: length 0 (a frame holds at least its type)", at));
  if (len > max_frame_) {
    throw ProtocolError(fmt::format("oversized frame at byte {}: length {} exceeds the maximum frame size {}", at,
                                    len, max_frame_));
  }
  (void)n;
  throw ProtocolError(fmt::format("malformed frame at byte {}: unknown message type {}", at,
                                  static_cast<unsigned>(data[at + kFrameHeaderBytes])));
}

void skip_arg(Reader& r) {
  const uint8_t tag = r.get<uint8_t>("arg.tag");
  switch (static_cast<ArgTag>(tag)) {
    case ArgTag::kNone:
    case ArgTag::kDevice: return;
    case ArgTag::kTensor: r.get<uint64_t>("arg.tensor"); return;
    case ArgTag::kTensorList: {
      const uint16_t n = r.get<uint16_t>("arg.tensor_list.n");
      r.take(size_t{n} * 8, "arg.tensor_list.ids");
      return;
    }
    case ArgTag::kInt: r.get<int64_t>("arg.int"); return;
    case ArgTag::kDouble: r.get<double>("arg.double"); return;
    case ArgTag::kBool: r.get<uint8_t>("arg.bool"); return;
    case ArgTag::kIntList: {
      const uint16_t n = r.get<uint16_t>("arg.int_list.n");
      r.take(size_t{n} * 8, "arg.int_list.values");
      return;
    }
    case ArgTag::kScalarType: r.get<uint8_t>("arg.scalar_type"); return;
    case ArgTag::kString: r.get_string("arg.string"); return;
    case ArgTag::kLayout: r.get<uint8_t>("arg.layout"); return;
    case ArgTag::kMemoryFormat: r.get<uint8_t>("arg.memory_format"); return;
  }
  r.invalid("args", fmt::format("unknown argument tag {}", static_cast<unsigned>(tag)));
}

OpArgs read_op_args(Reader& r) {
  OpArgs a;
  const size_t start = r.offset();
  const uint8_t* at = r.take(0, "args");
  a.count = r.get<uint16_t>("nargs");
  for (uint16_t i = 0; i < a.count; ++i) skip_arg(r);
  a.data = at;
  a.size = r.offset() - start;
  return a;
}

void validate(const FrameView& f) {
  switch (f.type) {
#define COX_WIRE_VALIDATE(Name, id, dir, str) \
  case MsgType::k##Name:                      \
    decode<Name>(f);                          \
    return;
    COX_WIRE_MESSAGES(COX_WIRE_VALIDATE)
#undef COX_WIRE_VALIDATE
  }
  throw ProtocolError(fmt::format("unknown message type {}", static_cast<unsigned>(f.type)));
}

std::string describe(const FrameView& f) {
  try {
    switch (f.type) {
#define COX_WIRE_DESCRIBE(Name, id, dir, str) \
  case MsgType::k##Name:                      \
    return to_string(decode<Name>(f));
      COX_WIRE_MESSAGES(COX_WIRE_DESCRIBE)
#undef COX_WIRE_DESCRIBE
    }
    return fmt::format("unknown message type {}", static_cast<unsigned>(f.type));
  } catch (const ProtocolError& e) {
    return fmt::format("{} (does not decode: {})", to_string(f.type), e.what());
  }
}

std::optional<FrameView> Assembler::feed(const FrameView& f) {
  if (f.type != MsgType::kFragment) return f;
  const Fragment m = decode<Fragment>(f);
  if (total_ == 0) {
    if (m.total == 0 || m.total > kMaxMessage) {
      throw ProtocolError(fmt::format("fragmented message of {} bytes (at most {} allowed)", m.total, kMaxMessage));
    }
    total_ = m.total;
    buf_.clear();
  } else if (m.total != total_) {
    throw ProtocolError(fmt::format("fragment of a {}-byte message inside one of {} bytes", m.total, total_));
  }
  if (m.piece.size == 0 || m.piece.size > total_ - buf_.size()) {
    throw ProtocolError(fmt::format("fragment of {} bytes overruns its message ({} of {} bytes present)",
                                    m.piece.size, buf_.size(), total_));
  }
  buf_.insert(buf_.end(), m.piece.data, m.piece.data + m.piece.size);
  if (buf_.size() < total_) return std::nullopt;
  total_ = 0;
  const auto type = static_cast<MsgType>(buf_[0]);
  if (!is_known_type(buf_[0]) || type == MsgType::kFragment) {
    throw ProtocolError(fmt::format("fragmented message of unknown type {}", static_cast<unsigned>(buf_[0])));
  }
  return FrameView{type, buf_.data() + 1, buf_.size() - 1};
}

}  // namespace cox::wire
