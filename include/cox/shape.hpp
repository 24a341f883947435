// cox::Shape: an N-d arrangement of ranks with named dimensions.
//
// A Shape is a strided view of the flat rank space: rank(coord) = offset +
// sum(coord[i] * strides[i]). A mesh {dp=2, tp=4} built from sizes is
// row-major over ranks 0..7; slicing, splitting, renaming and permuting give
// other views of the same ranks. Pure value type: no I/O, no torch.
#pragma once

#include <cox/export.hpp>

#include <cstdint>
#include <initializer_list>
#include <iosfwd>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cox {

// A coordinate: one index per dimension, in the shape's dimension order.
using Coord = std::vector<int64_t>;
// Indices by dimension name, in any order: {{"dp", 1}, {"tp", 0}}. A class
// rather than a vector alias so that rank_of({2}) is unambiguously a Coord.
class NamedCoord {
 public:
  using Entry = std::pair<std::string, int64_t>;
  NamedCoord(std::initializer_list<Entry> entries) : entries_(entries) {}
  explicit NamedCoord(std::vector<Entry> entries) : entries_(std::move(entries)) {}
  auto begin() const noexcept { return entries_.begin(); }
  auto end() const noexcept { return entries_.end(); }
  size_t size() const noexcept { return entries_.size(); }
  const Entry& operator[](size_t i) const noexcept { return entries_[i]; }

 private:
  std::vector<Entry> entries_;
};

class COX_API Shape {
 public:
  // A 0-d shape holding rank 0.
  Shape() = default;

  // Row-major over ranks 0..N-1: Shape({{"dp", 2}, {"tp", 4}}).
  Shape(std::initializer_list<std::pair<std::string, int64_t>> dims);
  explicit Shape(const std::vector<std::pair<std::string, int64_t>>& dims);

  // A general strided view. Names must be distinct, sizes and strides
  // positive, offset non-negative, and no two coordinates may map to the
  // same rank.
  Shape(std::vector<std::string> names, std::vector<int64_t> sizes, std::vector<int64_t> strides,
        int64_t offset);

  // --- inspection ---
  size_t ndim() const noexcept { return names_.size(); }
  const std::vector<std::string>& names() const noexcept { return names_; }
  const std::vector<int64_t>& sizes() const noexcept { return sizes_; }
  const std::vector<int64_t>& strides() const noexcept { return strides_; }
  int64_t offset() const noexcept { return offset_; }
  // Number of ranks in the view.
  int64_t size() const noexcept;
  int64_t size(std::string_view dim) const;
  // Position of `dim` among the dimensions; InvalidArgument when unknown.
  size_t index_of(std::string_view dim) const;
  bool has_dim(std::string_view dim) const noexcept;

  // --- ranks and coordinates ---
  int64_t rank_of(const Coord& coord) const;
  int64_t rank_of(const NamedCoord& coord) const;
  Coord coord_of(int64_t rank) const;
  // Every rank of the view, in row-major order of its coordinates.
  std::vector<int64_t> ranks() const;
  bool contains(int64_t rank) const noexcept;
  // Position of a (global) rank within this view's row-major order: the
  // rank "within the sub-mesh", as opposed to the rank itself.
  int64_t local_index(int64_t rank) const;

  // --- views ---
  // Removes `dim`, keeping index `index` of it.
  Shape slice(std::string_view dim, int64_t index) const;
  // Keeps `dim`, narrowed to begin, begin+step, ... < end.
  Shape slice(std::string_view dim, int64_t begin, int64_t end, int64_t step = 1) const;
  // Removes several dims at once: slice({{"dp", 1}, {"pp", 0}}).
  Shape slice(const NamedCoord& indices) const;
  // Splits `dim` into `names` of `sizes` (outermost first); at most one size
  // may be -1 and is inferred; the sizes must multiply to the dim's size.
  Shape split(std::string_view dim, const std::vector<std::string>& names,
              const std::vector<int64_t>& sizes) const;
  Shape rename(std::string_view from, std::string_view to) const;
  // All dims into one; legal when the ranks in row-major order form a single
  // evenly strided run (a dense view, e.g. any unsliced mesh).
  Shape flatten(std::string_view name) const;
  bool is_flattenable() const noexcept;
  Shape transpose(std::string_view a, std::string_view b) const;
  // Reorders the dims; `order` must name each dim exactly once.
  Shape permute(const std::vector<std::string>& order) const;

  // --- groups for collectives ---
  // The groups of ranks that differ only along `dims`: one group per
  // coordinate of the other dims (in row-major order of those), members in
  // row-major order of `dims` as listed. With no dims every rank is its own
  // group; with every dim there is one group.
  std::vector<std::vector<int64_t>> groups(const std::vector<std::string>& dims) const;

  // "{dp=2, tp=4}"; with strides and offset for non-default views by
  // to_string(true).
  std::string to_string(bool verbose = false) const;

  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    return a.offset_ == b.offset_ && a.names_ == b.names_ && a.sizes_ == b.sizes_ &&
           a.strides_ == b.strides_;
  }
  friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

 private:
  struct Unchecked {};
  Shape(Unchecked, std::vector<std::string> names, std::vector<int64_t> sizes,
        std::vector<int64_t> strides, int64_t offset)
      : names_(std::move(names)), sizes_(std::move(sizes)), strides_(std::move(strides)), offset_(offset) {}

  std::vector<std::string> names_;
  std::vector<int64_t> sizes_;
  std::vector<int64_t> strides_;
  int64_t offset_ = 0;
};

COX_API std::ostream& operator<<(std::ostream& os, const Shape& shape);

}  // namespace cox
