// Bounds-checked little-endian encoding of message fields.
//
// Writer appends to a byte vector. Reader walks a byte range and throws
// cox::ProtocolError naming the field, the offset and the sizes whenever a
// field would run past the end: no decode ever reads outside its input.
//
// Field codecs (put_field / get_field / print_field) cover every type a
// message may hold: integers, bools, enums with a declared range, strings,
// byte arrays, vectors, nested structs with a visit(), and views into the
// frame (Bytes, Ids, OpArgs) for payloads that are read in place.
#pragma once

#include <cox/errors.hpp>

#include <algorithm>
#include <array>
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
  void put_string(std::string_view s);
  size_t size() const noexcept { return out_.size(); }

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
    if (n) std::memcpy(out, p_, n);  // an empty vector's data() may be null
    p_ += n;
  }
  // n bytes in place: valid while the input is.
  const uint8_t* take(size_t n, const char* field) {
    need(n, field);
    const uint8_t* at = p_;
    p_ += n;
    return at;
  }
  std::string get_string(const char* field) {
    const uint32_t n = get<uint32_t>(field);
    need(n, field);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  // A count of `elem`-byte items that must fit in what remains.
  uint32_t get_count(size_t elem, const char* field) {
    const uint32_t n = get<uint32_t>(field);
    if (elem && n > remaining() / elem) too_many(n, elem, field);
    return n;
  }
  size_t remaining() const noexcept { return static_cast<size_t>(end_ - p_); }
  size_t offset() const noexcept { return static_cast<size_t>(p_ - begin_); }
  const char* what() const noexcept { return what_; }
  // Every decode ends here: bytes left over mean the peer and we disagree
  // about the message's layout.
  void expect_end() const;
  [[noreturn]] void invalid(const char* field, const std::string& why) const;

 private:
  void need(size_t n, const char* field) const {
    if (n > remaining()) truncated(n, field);
  }
  [[noreturn]] void truncated(size_t n, const char* field) const;
  [[noreturn]] void too_many(uint32_t n, size_t elem, const char* field) const;

  const uint8_t* begin_;
  const uint8_t* p_;
  const uint8_t* end_;
  const char* what_;
};

// --- views into a frame ------------------------------------------------------
// Valid while the frame they were decoded from is: a handler that keeps one
// copies it.

// Raw bytes with a 64-bit length: tensor data, read in place.
struct Bytes {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

// u64 ids (outputs of an op, ids to free), read in place.
struct Ids {
  const uint8_t* data = nullptr;
  uint32_t count = 0;
  uint64_t operator[](size_t i) const noexcept {
    uint64_t v;
    std::memcpy(&v, data + 8 * i, sizeof v);
    return v;
  }
  size_t size() const noexcept { return count; }
};

// An op's boxed arguments (u16 count, then tagged values; see ArgTag in
// messages.hpp), checked on decode and read onto a stack by the worker.
struct OpArgs {
  const uint8_t* data = nullptr;  // at the count
  size_t size = 0;                // bytes, count included
  uint16_t count = 0;
};

// --- enums ---------------------------------------------------------------------
// An enum travels as its underlying integer; decoding checks it against the
// range declared with COX_WIRE_ENUM.
template <class E>
struct EnumRange;  // { static constexpr underlying min, max; static const char* name(E); }

#define COX_WIRE_ENUM(E, lo, hi)                                \
  template <>                                                   \
  struct EnumRange<E> {                                         \
    static constexpr std::underlying_type_t<E> min = lo;        \
    static constexpr std::underlying_type_t<E> max = hi;        \
  }

// --- field codecs ----------------------------------------------------------------

template <class T, class = void>
struct has_visit : std::false_type {};
template <class T>
struct has_visit<T, std::void_t<decltype(T::visit(std::declval<T&>(), std::declval<int&>()))>> : std::true_type {};

std::string print_bytes(size_t n);

template <class T>
struct is_byte_array : std::false_type {};
template <size_t N>
struct is_byte_array<std::array<uint8_t, N>> : std::true_type {};

template <class T>
void put_field(Writer& w, const T& v);
template <class T>
void get_field(Reader& r, T& v, const char* field);
template <class T>
void print_field(std::string& out, const T& v);
template <size_t N>
void put_container(Writer& w, const std::array<uint8_t, N>& a);
template <class T>
void put_container(Writer& w, const std::vector<T>& v);
template <size_t N>
void get_container(Reader& r, std::array<uint8_t, N>& a, const char* field);
template <class T>
void get_container(Reader& r, std::vector<T>& v, const char* field);
// Checks an op's arguments and returns the view over them.
OpArgs read_op_args(Reader& r);

// Applies the codecs to each field that T::visit names.
struct EncodeVisitor {
  Writer& w;
  template <class T>
  void operator()(const T& v, const char*) { put_field(w, v); }
};
struct DecodeVisitor {
  Reader& r;
  template <class T>
  void operator()(T& v, const char* name) { get_field(r, v, name); }
};
struct PrintVisitor {
  std::string& out;
  bool first = true;
  template <class T>
  void operator()(const T& v, const char* name) {
    if (!first) out += ", ";
    first = false;
    out += name;
    out += '=';
    print_field(out, v);
  }
};

template <class T>
void put_field(Writer& w, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    w.put<uint8_t>(v ? 1 : 0);
  } else if constexpr (std::is_arithmetic_v<T>) {
    w.put(v);
  } else if constexpr (std::is_enum_v<T>) {
    w.put(static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_same_v<T, std::string>) {
    w.put_string(v);
  } else if constexpr (std::is_same_v<T, Bytes>) {
    w.put<uint64_t>(v.size);
    w.put_bytes(v.data, v.size);
  } else if constexpr (std::is_same_v<T, Ids>) {
    w.put<uint32_t>(v.count);
    w.put_bytes(v.data, 8 * size_t{v.count});
  } else if constexpr (std::is_same_v<T, OpArgs>) {
    if (v.data) {
      w.put_bytes(v.data, v.size);
    } else {
      w.put<uint16_t>(0);  // no arguments
    }
  } else if constexpr (has_visit<T>::value) {
    EncodeVisitor e{w};
    T::visit(v, e);
  } else {
    put_container(w, v);
  }
}

template <size_t N>
void put_container(Writer& w, const std::array<uint8_t, N>& a) {
  w.put_bytes(a.data(), N);
}
template <class T>
void put_container(Writer& w, const std::vector<T>& v) {
  w.put(static_cast<uint32_t>(v.size()));
  if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
    w.put_bytes(v.data(), v.size() * sizeof(T));
  } else {
    for (const T& x : v) put_field(w, x);
  }
}

template <size_t N>
void get_container(Reader& r, std::array<uint8_t, N>& a, const char* field) {
  r.get_bytes(a.data(), N, field);
}
template <class T>
void get_container(Reader& r, std::vector<T>& v, const char* field) {
  if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
    const uint32_t n = r.get_count(sizeof(T), field);
    v.resize(n);
    r.get_bytes(v.data(), n * sizeof(T), field);
  } else {
    // Every element takes at least one byte; grown as they decode, so that
    // memory follows the bytes actually there, not the count announced.
    const uint32_t n = r.get_count(1, field);
    v.clear();
    v.reserve(std::min<uint32_t>(n, 64));
    for (uint32_t i = 0; i < n; ++i) {
      T x;
      get_field(r, x, field);
      v.push_back(std::move(x));
    }
  }
}

template <class T>
void get_field(Reader& r, T& v, const char* field) {
  if constexpr (std::is_same_v<T, bool>) {
    v = r.get<uint8_t>(field) != 0;
  } else if constexpr (std::is_arithmetic_v<T>) {
    v = r.get<T>(field);
  } else if constexpr (std::is_enum_v<T>) {
    using U = std::underlying_type_t<T>;
    const U u = r.get<U>(field);
    if (u < EnumRange<T>::min || u > EnumRange<T>::max) {
      r.invalid(field, "value " + std::to_string(+u) + " is out of range [" + std::to_string(+EnumRange<T>::min) +
                           ", " + std::to_string(+EnumRange<T>::max) + "]");
    }
    v = static_cast<T>(u);
  } else if constexpr (std::is_same_v<T, std::string>) {
    v = r.get_string(field);
  } else if constexpr (std::is_same_v<T, Bytes>) {
    const uint64_t n = r.get<uint64_t>(field);
    if (n > r.remaining()) r.invalid(field, std::to_string(n) + " bytes announced, " + std::to_string(r.remaining()) + " remain");
    v.size = n;
    v.data = r.take(static_cast<size_t>(n), field);
  } else if constexpr (std::is_same_v<T, Ids>) {
    v.count = r.get_count(8, field);
    v.data = r.take(8 * size_t{v.count}, field);
  } else if constexpr (std::is_same_v<T, OpArgs>) {
    v = read_op_args(r);
  } else if constexpr (has_visit<T>::value) {
    DecodeVisitor d{r};
    T::visit(v, d);
  } else {
    get_container(r, v, field);
  }
}

template <class T>
void print_field(std::string& out, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    out += v ? "true" : "false";
  } else if constexpr (std::is_arithmetic_v<T>) {
    out += std::to_string(v);
  } else if constexpr (std::is_enum_v<T>) {
    out += std::to_string(+static_cast<std::underlying_type_t<T>>(v));
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (v.size() <= 64) {
      out += '"';
      out += v;
      out += '"';
    } else {
      out += print_bytes(v.size());
    }
  } else if constexpr (std::is_same_v<T, Bytes>) {
    out += print_bytes(v.size);
  } else if constexpr (std::is_same_v<T, Ids>) {
    out += '[';
    for (size_t i = 0; i < v.size() && i < 8; ++i) out += (i ? ", " : "") + std::to_string(v[i]);
    if (v.size() > 8) out += ", ... (" + std::to_string(v.size()) + ")";
    out += ']';
  } else if constexpr (std::is_same_v<T, OpArgs>) {
    out += std::to_string(v.count) + " args";
  } else if constexpr (has_visit<T>::value) {
    out += '{';
    PrintVisitor p{out};
    T::visit(v, p);
    out += '}';
  } else if constexpr (is_byte_array<T>::value) {
    out += print_bytes(v.size());
  } else {
    out += '[';
    for (size_t i = 0; i < v.size() && i < 8; ++i) {
      if (i) out += ", ";
      print_field(out, v[i]);
    }
    if (v.size() > 8) out += ", ... (" + std::to_string(v.size()) + ")";
    out += ']';
  }
}

}  // namespace cox::wire
