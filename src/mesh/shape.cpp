// The mesh algebra: strided, named views of the flat rank space.
#include <cox/shape.hpp>

#include "common/check.hpp"

#include <algorithm>
#include <numeric>
#include <ostream>

namespace cox {
namespace {

void check_name(std::string_view op, const std::string& name) {
  COX_CHECK_ARG(!name.empty(), "{}: dimension names must not be empty", op);
}

void check_distinct(std::string_view op, const std::vector<std::string>& names) {
  for (size_t i = 0; i < names.size(); ++i) {
    check_name(op, names[i]);
    for (size_t j = 0; j < i; ++j) {
      COX_CHECK_ARG(names[i] != names[j], "{}: duplicate dimension name '{}' in [{}]", op, names[i],
                    fmt::join(names, ", "));
    }
  }
}

// a * b and a + b, or false where the result does not fit in int64.
bool mul_fits(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool add_fits(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }

// "a=4, b=8": the dims named in an overflow error.
std::string dims_string(const std::vector<std::string>& names, const std::vector<int64_t>& sizes) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += fmt::format("{}{}={}", i ? ", " : "", names[i], sizes[i]);
  return s;
}

// The sizes' product, which must fit in int64 (a mesh of more ranks than
// that has no rank numbers).
void check_product(std::string_view op, const std::vector<std::string>& names, const std::vector<int64_t>& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) {
    COX_CHECK_ARG(mul_fits(n, s, &n), "{}: dims {{{}}} have more than 2^63-1 ranks in all (the product of the sizes "
                  "overflows int64)", op, dims_string(names, sizes));
  }
}

// Appends the ranks base + sum(c[i] * strides[i]) in row-major order of c.
void append_ranks(int64_t base, const int64_t* sizes, const int64_t* strides, size_t n,
                  std::vector<int64_t>& out) {
  if (n == 0) {
    out.push_back(base);
    return;
  }
  for (int64_t i = 0; i < sizes[0]; ++i) {
    append_ranks(base + i * strides[0], sizes + 1, strides + 1, n - 1, out);
  }
}

}  // namespace

Shape::Shape(std::initializer_list<std::pair<std::string, int64_t>> dims)
    : Shape(std::vector<std::pair<std::string, int64_t>>(dims)) {}

Shape::Shape(const std::vector<std::pair<std::string, int64_t>>& dims) {
  names_.reserve(dims.size());
  sizes_.reserve(dims.size());
  for (const auto& [name, size] : dims) {
    COX_CHECK_ARG(size > 0, "Shape: dimension '{}' has non-positive size {}", name, size);
    names_.push_back(name);
    sizes_.push_back(size);
  }
  check_distinct("Shape", names_);
  check_product("Shape", names_, sizes_);
  strides_.assign(sizes_.size(), 1);
  for (size_t i = sizes_.size(); i-- > 1;) {
    strides_[i - 1] = strides_[i] * sizes_[i];
  }
}

Shape::Shape(std::vector<std::string> names, std::vector<int64_t> sizes, std::vector<int64_t> strides,
             int64_t offset)
    : names_(std::move(names)), sizes_(std::move(sizes)), strides_(std::move(strides)), offset_(offset) {
  COX_CHECK_ARG(names_.size() == sizes_.size() && sizes_.size() == strides_.size(),
                "Shape: {} names, {} sizes and {} strides; they must have the same length",
                names_.size(), sizes_.size(), strides_.size());
  check_distinct("Shape", names_);
  COX_CHECK_ARG(offset_ >= 0, "Shape: negative offset {}", offset_);
  for (size_t i = 0; i < names_.size(); ++i) {
    COX_CHECK_ARG(sizes_[i] > 0, "Shape: dimension '{}' has non-positive size {}", names_[i], sizes_[i]);
    COX_CHECK_ARG(strides_[i] > 0, "Shape: dimension '{}' has non-positive stride {}", names_[i],
                  strides_[i]);
  }
  check_product("Shape", names_, sizes_);
  // Distinct coordinates must give distinct ranks. We require the strides to
  // nest (each, in decreasing order, exceeds the reach of all smaller ones),
  // which every view derived from a dense mesh satisfies and which makes
  // coord_of a greedy division.
  std::vector<size_t> order;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (sizes_[i] > 1) order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return strides_[a] < strides_[b]; });
  int64_t reach = 0;  // largest offset reachable through the dims seen so far
  for (size_t i : order) {
    COX_CHECK_ARG(strides_[i] > reach,
                  "Shape: strides [{}] with sizes [{}] overlap: dimension '{}' (stride {}) "
                  "revisits ranks of smaller strides",
                  fmt::join(strides_, ", "), fmt::join(sizes_, ", "), names_[i], strides_[i]);
    int64_t span = 0;
    COX_CHECK_ARG(mul_fits(strides_[i], sizes_[i] - 1, &span) && add_fits(reach, span, &reach),
                  "Shape: dimension '{}' (size {}, stride {}) reaches ranks past 2^63-1 in {{{}}}", names_[i],
                  sizes_[i], strides_[i], dims_string(names_, sizes_));
  }
  int64_t last = 0;
  COX_CHECK_ARG(add_fits(offset_, reach, &last), "Shape: offset {} with strides [{}] and sizes [{}] reaches ranks "
                "past 2^63-1", offset_, fmt::join(strides_, ", "), fmt::join(sizes_, ", "));
}

int64_t Shape::size() const noexcept {
  int64_t n = 1;
  for (int64_t s : sizes_) n *= s;
  return n;
}

int64_t Shape::size(std::string_view dim) const { return sizes_[index_of(dim)]; }

bool Shape::has_dim(std::string_view dim) const noexcept {
  return std::find(names_.begin(), names_.end(), dim) != names_.end();
}

size_t Shape::index_of(std::string_view dim) const {
  auto it = std::find(names_.begin(), names_.end(), dim);
  COX_CHECK_ARG(it != names_.end(), "unknown mesh dimension '{}' in {}", dim, to_string());
  return static_cast<size_t>(it - names_.begin());
}

int64_t Shape::rank_of(const Coord& coord) const {
  COX_CHECK_ARG(coord.size() == ndim(), "rank_of: coordinate [{}] has {} entries but {} has {} dims",
                fmt::join(coord, ", "), coord.size(), to_string(), ndim());
  int64_t rank = offset_;
  for (size_t i = 0; i < coord.size(); ++i) {
    COX_CHECK_ARG(coord[i] >= 0 && coord[i] < sizes_[i],
                  "rank_of: index {} out of range for dimension '{}' of size {} in {}", coord[i],
                  names_[i], sizes_[i], to_string());
    rank += coord[i] * strides_[i];
  }
  return rank;
}

int64_t Shape::rank_of(const NamedCoord& coord) const {
  Coord c(ndim(), -1);
  for (const auto& [name, index] : coord) {
    size_t d = index_of(name);
    COX_CHECK_ARG(c[d] == -1, "rank_of: dimension '{}' given twice", name);
    COX_CHECK_ARG(index >= 0, "rank_of: index {} out of range for dimension '{}' of size {} in {}",
                  index, name, sizes_[d], to_string());
    c[d] = index;
  }
  for (size_t d = 0; d < ndim(); ++d) {
    COX_CHECK_ARG(c[d] != -1, "rank_of: coordinate has no index for dimension '{}' of {}", names_[d],
                  to_string());
  }
  return rank_of(c);
}

namespace {
// Greedy decomposition of rank - offset over the nested strides; false when
// the rank is outside the view.
bool decompose(const Shape& s, int64_t rank, Coord* out) {
  int64_t rest = rank - s.offset();
  if (rest < 0) return false;
  const size_t n = s.ndim();
  std::vector<size_t> order;
  order.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (s.sizes()[i] > 1) order.push_back(i);
  }
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return s.strides()[a] > s.strides()[b]; });
  if (out) out->assign(n, 0);
  for (size_t i : order) {
    int64_t c = rest / s.strides()[i];
    if (c >= s.sizes()[i]) return false;
    rest -= c * s.strides()[i];
    if (out) (*out)[i] = c;
  }
  return rest == 0;
}
}  // namespace

Coord Shape::coord_of(int64_t rank) const {
  Coord c;
  COX_CHECK_ARG(decompose(*this, rank, &c), "coord_of: rank {} is not in {}", rank, to_string(true));
  return c;
}

bool Shape::contains(int64_t rank) const noexcept { return decompose(*this, rank, nullptr); }

int64_t Shape::local_index(int64_t rank) const {
  Coord c;
  COX_CHECK_ARG(decompose(*this, rank, &c), "local_index: rank {} is not in {}", rank, to_string(true));
  int64_t index = 0;
  for (size_t i = 0; i < c.size(); ++i) index = index * sizes_[i] + c[i];
  return index;
}

std::vector<int64_t> Shape::ranks() const {
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(size()));
  append_ranks(offset_, sizes_.data(), strides_.data(), ndim(), out);
  return out;
}

Shape Shape::slice(std::string_view dim, int64_t index) const {
  size_t d = index_of(dim);
  COX_CHECK_ARG(index >= 0 && index < sizes_[d],
                "slice: index {} out of range for dimension '{}' of size {} in {}", index, dim,
                sizes_[d], to_string());
  Shape out = *this;
  out.offset_ += index * strides_[d];
  out.names_.erase(out.names_.begin() + d);
  out.sizes_.erase(out.sizes_.begin() + d);
  out.strides_.erase(out.strides_.begin() + d);
  return out;
}

Shape Shape::slice(std::string_view dim, int64_t begin, int64_t end, int64_t step) const {
  size_t d = index_of(dim);
  COX_CHECK_ARG(step > 0, "slice: step {} for dimension '{}' must be positive", step, dim);
  COX_CHECK_ARG(begin >= 0 && begin < sizes_[d],
                "slice: begin {} out of range for dimension '{}' of size {} in {}", begin, dim, sizes_[d],
                to_string());
  COX_CHECK_ARG(end > begin && end <= sizes_[d],
                "slice: end {} out of range for dimension '{}' of size {} with begin {} in {} "
                "(need begin < end <= size)",
                end, dim, sizes_[d], begin, to_string());
  Shape out = *this;
  out.offset_ += begin * strides_[d];
  // (end - begin + step - 1) / step would overflow for a step near 2^63.
  out.sizes_[d] = (end - begin - 1) / step + 1;
  // A dim of one element reaches nothing: its stride may stay as it was
  // where stride * step does not fit (for more elements it always fits).
  if (!mul_fits(strides_[d], step, &out.strides_[d])) out.strides_[d] = strides_[d];
  return out;
}

Shape Shape::slice(const NamedCoord& indices) const {
  for (size_t i = 0; i < indices.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      COX_CHECK_ARG(indices[i].first != indices[j].first, "slice: dimension '{}' given twice",
                    indices[i].first);
    }
  }
  Shape out = *this;
  for (const auto& [name, index] : indices) {
    // Check against this shape so that the message shows the whole mesh.
    size_t d = index_of(name);
    COX_CHECK_ARG(index >= 0 && index < sizes_[d],
                  "slice: index {} out of range for dimension '{}' of size {} in {}", index, name,
                  sizes_[d], to_string());
    out = out.slice(name, index);
  }
  return out;
}

Shape Shape::split(std::string_view dim, const std::vector<std::string>& names,
                   const std::vector<int64_t>& sizes) const {
  size_t d = index_of(dim);
  COX_CHECK_ARG(!names.empty(), "split: no names given for dimension '{}'", dim);
  COX_CHECK_ARG(names.size() == sizes.size(), "split: {} names [{}] but {} sizes [{}]", names.size(),
                fmt::join(names, ", "), sizes.size(), fmt::join(sizes, ", "));
  check_distinct("split", names);
  for (const auto& n : names) {
    COX_CHECK_ARG(n == dim || !has_dim(n), "split: new dimension name '{}' already names a dimension of {}",
                  n, to_string());
  }
  int64_t known = 1;
  int inferred = -1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == -1) {
      COX_CHECK_ARG(inferred == -1, "split: more than one size to infer in [{}]", fmt::join(sizes, ", "));
      inferred = static_cast<int>(i);
    } else {
      COX_CHECK_ARG(sizes[i] > 0, "split: size {} for '{}' must be positive (or -1 to infer)", sizes[i],
                    names[i]);
      COX_CHECK_ARG(mul_fits(known, sizes[i], &known),
                    "split: sizes [{}] for [{}] multiply past 2^63-1, not to the size {} of '{}'",
                    fmt::join(sizes, ", "), fmt::join(names, ", "), sizes_[d], dim);
    }
  }
  std::vector<int64_t> resolved = sizes;
  if (inferred >= 0) {
    COX_CHECK_ARG(sizes_[d] % known == 0,
                  "split: sizes [{}] do not divide dimension '{}' of size {}", fmt::join(sizes, ", "), dim,
                  sizes_[d]);
    resolved[inferred] = sizes_[d] / known;
  } else {
    COX_CHECK_ARG(known == sizes_[d], "split: sizes [{}] multiply to {}, not to the size {} of '{}'",
                  fmt::join(sizes, ", "), known, sizes_[d], dim);
  }
  std::vector<int64_t> strides(resolved.size());
  int64_t stride = strides_[d];
  for (size_t i = resolved.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= resolved[i];
  }
  Shape out = *this;
  out.names_.erase(out.names_.begin() + d);
  out.sizes_.erase(out.sizes_.begin() + d);
  out.strides_.erase(out.strides_.begin() + d);
  out.names_.insert(out.names_.begin() + d, names.begin(), names.end());
  out.sizes_.insert(out.sizes_.begin() + d, resolved.begin(), resolved.end());
  out.strides_.insert(out.strides_.begin() + d, strides.begin(), strides.end());
  return out;
}

Shape Shape::rename(std::string_view from, std::string_view to) const {
  size_t d = index_of(from);
  COX_CHECK_ARG(!to.empty(), "rename: new name for '{}' must not be empty", from);
  COX_CHECK_ARG(to == from || !has_dim(to), "rename: '{}' already names a dimension of {}", to,
                to_string());
  Shape out = *this;
  out.names_[d] = std::string(to);
  return out;
}

bool Shape::is_flattenable() const noexcept {
  int64_t inner_stride = 0, inner_size = 0;  // last non-trivial dim seen, scanning inward
  for (size_t i = ndim(); i-- > 0;) {
    if (sizes_[i] == 1) continue;
    if (inner_size != 0 && strides_[i] != inner_stride * inner_size) return false;
    inner_stride = strides_[i];
    inner_size = sizes_[i];
  }
  return true;
}

Shape Shape::flatten(std::string_view name) const {
  COX_CHECK_ARG(!name.empty(), "flatten: the new dimension name must not be empty");
  COX_CHECK_ARG(is_flattenable(),
                "flatten: {} is not dense: its ranks [{}] are not one evenly strided run",
                to_string(true), fmt::join(ranks(), ", "));
  int64_t stride = 1;
  for (size_t i = ndim(); i-- > 0;) {
    if (sizes_[i] > 1) {
      stride = strides_[i];
      break;
    }
  }
  return Shape(Unchecked{}, {std::string(name)}, {size()}, {stride}, offset_);
}

Shape Shape::transpose(std::string_view a, std::string_view b) const {
  size_t i = index_of(a), j = index_of(b);
  Shape out = *this;
  std::swap(out.names_[i], out.names_[j]);
  std::swap(out.sizes_[i], out.sizes_[j]);
  std::swap(out.strides_[i], out.strides_[j]);
  return out;
}

Shape Shape::permute(const std::vector<std::string>& order) const {
  COX_CHECK_ARG(order.size() == ndim(), "permute: order [{}] must name each of the {} dims of {}",
                fmt::join(order, ", "), ndim(), to_string());
  check_distinct("permute", order);
  Shape out = *this;
  for (size_t i = 0; i < order.size(); ++i) {
    size_t d = index_of(order[i]);
    out.names_[i] = names_[d];
    out.sizes_[i] = sizes_[d];
    out.strides_[i] = strides_[d];
  }
  return out;
}

std::vector<std::vector<int64_t>> Shape::groups(const std::vector<std::string>& dims) const {
  check_distinct("groups", dims);
  std::vector<int64_t> in_sizes, in_strides, out_sizes, out_strides;
  std::vector<bool> inside(ndim(), false);
  for (const auto& name : dims) {
    size_t d = index_of(name);
    inside[d] = true;
    in_sizes.push_back(sizes_[d]);
    in_strides.push_back(strides_[d]);
  }
  for (size_t d = 0; d < ndim(); ++d) {
    if (!inside[d]) {
      out_sizes.push_back(sizes_[d]);
      out_strides.push_back(strides_[d]);
    }
  }
  std::vector<int64_t> bases;
  append_ranks(offset_, out_sizes.data(), out_strides.data(), out_sizes.size(), bases);
  std::vector<std::vector<int64_t>> out(bases.size());
  for (size_t g = 0; g < bases.size(); ++g) {
    append_ranks(bases[g], in_sizes.data(), in_strides.data(), in_sizes.size(), out[g]);
  }
  return out;
}

std::string Shape::to_string(bool verbose) const {
  std::string s = "{";
  for (size_t i = 0; i < ndim(); ++i) {
    if (i) s += ", ";
    s += fmt::format("{}={}", names_[i], sizes_[i]);
  }
  s += "}";
  if (verbose) s += fmt::format(" (strides [{}], offset {})", fmt::join(strides_, ", "), offset_);
  return s;
}

std::ostream& operator<<(std::ostream& os, const Shape& shape) { return os << shape.to_string(); }

}  // namespace cox
