// Bounds-checked little-endian encoding of message fields.
//
// Writer appends to a byte vector. Reader walks a byte range and throws
// cox::ProtocolError naming the field, the offset and the sizes whenever a
// field would run past the end: no decode ever reads outside its input.
#pragma once

#include <cox/errors.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace cox::wire {

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : out_(out) {}

  template <class T>
  void put(T v) {
    static_assert(std::is_arithmetic_v<T>, "put() takes arithmetic values");
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format is little-endian");
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void put_bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    out_.insert(out_.end(), p, p + n);
  }
  // u32 length, then the bytes.
  void put_string(std::string_view s) {
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    put_bytes(s.data(), s.size());
  }

 private:
  std::vector<uint8_t>& out_;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const char* what = "message")
      : begin_(data), p_(data), end_(data + size), what_(what) {}

  template <class T>
  T get(const char* field) {
    static_assert(std::is_arithmetic_v<T>, "get() returns arithmetic values");
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  void get_bytes(void* out, size_t n, const char* field) {
    need(n, field);
    std::memcpy(out, p_, n);
    p_ += n;
  }
  std::string get_string(const char* field) {
    const uint32_t n = get<uint32_t>(field);
    need(n, field);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  size_t remaining() const noexcept { return static_cast<size_t>(end_ - p_); }
  size_t offset() const noexcept { return static_cast<size_t>(p_ - begin_); }
  // Every decode ends here: bytes left over mean the peer and we disagree
  // about the message's layout.
  void expect_end() const;

 private:
  void need(size_t n, const char* field) const {
    if (n > remaining()) truncated(n, field);
  }
  [[noreturn]] void truncated(size_t n, const char* field) const;

  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const char* what_;
};

}  // namespace cox::wire
