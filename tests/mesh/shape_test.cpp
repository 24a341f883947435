// The mesh algebra: table tests for each operation, property tests against a
// brute-force model (an explicit N-d array of ranks), and every error.
#include <cox/errors.hpp>
#include <cox/shape.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>

using cox::Coord;
using cox::Shape;

namespace {

// ---------------------------------------------------------------------------
// Brute-force model: the ranks of a view listed in row-major order.
struct Ref {
  std::vector<std::string> names;
  std::vector<int64_t> sizes;
  std::vector<int64_t> ranks;

  static Ref dense(const std::vector<std::pair<std::string, int64_t>>& dims) {
    Ref r;
    int64_t n = 1;
    for (auto& [name, size] : dims) {
      r.names.push_back(name);
      r.sizes.push_back(size);
      n *= size;
    }
    for (int64_t i = 0; i < n; ++i) r.ranks.push_back(i);
    return r;
  }
  size_t dim(const std::string& name) const {
    return size_t(std::find(names.begin(), names.end(), name) - names.begin());
  }
  int64_t flat(const Coord& c) const {
    int64_t f = 0;
    for (size_t i = 0; i < c.size(); ++i) f = f * sizes[i] + c[i];
    return f;
  }
  // Builds a new view of `new_sizes` whose element at coordinate c is
  // ranks[flat(old_coord(c))].
  template <class F>
  Ref remap(std::vector<std::string> new_names, std::vector<int64_t> new_sizes, F old_coord) const {
    Ref out;
    out.names = std::move(new_names);
    out.sizes = std::move(new_sizes);
    int64_t n = 1;
    for (auto s : out.sizes) n *= s;
    Coord c(out.sizes.size(), 0);
    for (int64_t i = 0; i < n; ++i) {
      out.ranks.push_back(ranks[flat(old_coord(c))]);
      for (size_t d = c.size(); d-- > 0;) {
        if (++c[d] < out.sizes[d]) break;
        c[d] = 0;
      }
    }
    return out;
  }
  Ref slice(const std::string& name, int64_t index) const {
    size_t d = dim(name);
    auto nn = names;
    auto ns = sizes;
    nn.erase(nn.begin() + d);
    ns.erase(ns.begin() + d);
    return remap(nn, ns, [&](const Coord& c) {
      Coord o = c;
      o.insert(o.begin() + d, index);
      return o;
    });
  }
  Ref slice(const std::string& name, int64_t b, int64_t e, int64_t step) const {
    size_t d = dim(name);
    auto ns = sizes;
    ns[d] = 0;
    for (int64_t i = b; i < e; i += step) ++ns[d];
    return remap(names, ns, [&](const Coord& c) {
      Coord o = c;
      o[d] = b + c[d] * step;
      return o;
    });
  }
  Ref split(const std::string& name, const std::vector<std::string>& nn_, const std::vector<int64_t>& parts) const {
    size_t d = dim(name);
    auto nn = names;
    auto ns = sizes;
    nn.erase(nn.begin() + d);
    ns.erase(ns.begin() + d);
    nn.insert(nn.begin() + d, nn_.begin(), nn_.end());
    ns.insert(ns.begin() + d, parts.begin(), parts.end());
    return remap(nn, ns, [&](const Coord& c) {
      Coord o;
      for (size_t i = 0; i < d; ++i) o.push_back(c[i]);
      int64_t v = 0;
      for (size_t i = 0; i < parts.size(); ++i) v = v * parts[i] + c[d + i];
      o.push_back(v);
      for (size_t i = d + parts.size(); i < c.size(); ++i) o.push_back(c[i]);
      return o;
    });
  }
  Ref permute(const std::vector<std::string>& order) const {
    std::vector<size_t> from;
    std::vector<int64_t> ns;
    for (auto& n : order) {
      from.push_back(dim(n));
      ns.push_back(sizes[dim(n)]);
    }
    return remap(order, ns, [&](const Coord& c) {
      Coord o(c.size());
      for (size_t i = 0; i < c.size(); ++i) o[from[i]] = c[i];
      return o;
    });
  }
  bool evenly_strided() const {
    if (ranks.size() < 3) return true;
    for (size_t i = 2; i < ranks.size(); ++i) {
      if (ranks[i] - ranks[i - 1] != ranks[1] - ranks[0]) return false;
    }
    return true;
  }
  std::vector<std::vector<int64_t>> groups(const std::vector<std::string>& dims) const {
    std::vector<std::string> order;
    for (auto& n : names) {
      if (std::find(dims.begin(), dims.end(), n) == dims.end()) order.push_back(n);
    }
    order.insert(order.end(), dims.begin(), dims.end());
    Ref p = permute(order);
    int64_t inner = 1;
    for (auto& n : dims) inner *= sizes[dim(n)];
    std::vector<std::vector<int64_t>> out;
    for (size_t i = 0; i < p.ranks.size(); i += size_t(inner)) {
      out.emplace_back(p.ranks.begin() + long(i), p.ranks.begin() + long(i) + inner);
    }
    return out;
  }
};

void check_same(const Shape& s, const Ref& r) {
  INFO("shape " << s.to_string(true));
  REQUIRE(s.names() == r.names);
  REQUIRE(s.sizes() == r.sizes);
  REQUIRE(s.ranks() == r.ranks);
  REQUIRE(s.size() == int64_t(r.ranks.size()));
  // rank <-> coordinate both ways, local index, and membership.
  std::set<int64_t> members(r.ranks.begin(), r.ranks.end());
  for (size_t i = 0; i < r.ranks.size(); ++i) {
    Coord c = s.coord_of(r.ranks[i]);
    REQUIRE(s.rank_of(c) == r.ranks[i]);
    REQUIRE(r.flat(c) == int64_t(i));
    REQUIRE(s.local_index(r.ranks[i]) == int64_t(i));
  }
  int64_t hi = *members.rbegin() + 3;
  for (int64_t rank = 0; rank <= hi; ++rank) {
    REQUIRE(s.contains(rank) == (members.count(rank) == 1));
  }
  REQUIRE(s.is_flattenable() == r.evenly_strided());
}

template <class F>
void require_invalid(F f, const std::string& needle) {
  try {
    f();
    FAIL("expected cox::InvalidArgument mentioning '" << needle << "'");
  } catch (const cox::InvalidArgument& e) {
    INFO("message: " << e.what());
    REQUIRE(std::string(e.what()).find(needle) != std::string::npos);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Table tests.

TEST_CASE("a mesh built from sizes is row-major over ranks 0..N-1", "[shape]") {
  Shape s({{"dp", 2}, {"tp", 4}});
  REQUIRE(s.ndim() == 2);
  REQUIRE(s.size() == 8);
  REQUIRE(s.size("dp") == 2);
  REQUIRE(s.size("tp") == 4);
  REQUIRE(s.index_of("tp") == 1);
  REQUIRE(s.strides() == std::vector<int64_t>{4, 1});
  REQUIRE(s.offset() == 0);
  REQUIRE(s.ranks() == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
  REQUIRE(s.rank_of({1, 2}) == 6);
  REQUIRE(s.rank_of(cox::NamedCoord{{"tp", 2}, {"dp", 1}}) == 6);
  REQUIRE(s.coord_of(5) == Coord{1, 1});
  REQUIRE(s.to_string() == "{dp=2, tp=4}");
  std::ostringstream os;
  os << s;
  REQUIRE(os.str() == "{dp=2, tp=4}");
}

TEST_CASE("slice by index removes the dim", "[shape]") {
  Shape s({{"dp", 2}, {"tp", 4}});
  Shape row = s.slice("dp", 1);
  REQUIRE(row.names() == std::vector<std::string>{"tp"});
  REQUIRE(row.ranks() == std::vector<int64_t>{4, 5, 6, 7});
  REQUIRE(row.local_index(6) == 2);
  Shape col = s.slice("tp", 3);
  REQUIRE(col.ranks() == std::vector<int64_t>{3, 7});
  Shape one = s.slice({{"dp", 1}, {"tp", 2}});
  REQUIRE(one.ndim() == 0);
  REQUIRE(one.size() == 1);
  REQUIRE(one.ranks() == std::vector<int64_t>{6});
  REQUIRE(one.rank_of(Coord{}) == 6);
  REQUIRE(one.to_string() == "{}");
}

TEST_CASE("slice by range keeps the dim narrowed", "[shape]") {
  Shape s({{"dp", 2}, {"tp", 4}});
  Shape half = s.slice("tp", 0, 2);
  REQUIRE(half.sizes() == std::vector<int64_t>{2, 2});
  REQUIRE(half.ranks() == std::vector<int64_t>{0, 1, 4, 5});
  Shape odd = s.slice("tp", 1, 4, 2);
  REQUIRE(odd.ranks() == std::vector<int64_t>{1, 3, 5, 7});
  REQUIRE(odd.contains(3));
  REQUIRE_FALSE(odd.contains(2));
  REQUIRE(s.slice("dp", 1, 2) != s.slice("dp", 0, 1));
  REQUIRE(s.slice("dp", 0, 2) == s);
}

TEST_CASE("split, rename, flatten, transpose, permute", "[shape]") {
  Shape s({{"host", 2}, {"gpu", 8}});
  Shape t = s.split("gpu", {"dp", "tp"}, {-1, 4});
  REQUIRE(t.names() == std::vector<std::string>{"host", "dp", "tp"});
  REQUIRE(t.sizes() == std::vector<int64_t>{2, 2, 4});
  REQUIRE(t.strides() == std::vector<int64_t>{8, 4, 1});
  REQUIRE(t.flatten("world") == Shape({{"world", 16}}));
  REQUIRE(s.split("gpu", {"gpu"}, {8}) == s);
  REQUIRE(s.rename("gpu", "local").names() == std::vector<std::string>{"host", "local"});
  Shape tr = s.transpose("host", "gpu");
  REQUIRE(tr.names() == std::vector<std::string>{"gpu", "host"});
  REQUIRE(tr.ranks()[1] == 8);
  REQUIRE_FALSE(tr.is_flattenable());
  REQUIRE(t.permute({"tp", "host", "dp"}).sizes() == std::vector<int64_t>{4, 2, 2});
  // A strided but evenly spaced view flattens to one strided dim.
  Shape every_other = Shape({{"dp", 2}, {"tp", 4}}).slice("tp", 0, 4, 2).flatten("x");
  REQUIRE(every_other.ranks() == std::vector<int64_t>{0, 2, 4, 6});
}

TEST_CASE("groups: ranks that differ only along the given dims", "[shape]") {
  Shape s({{"dp", 2}, {"tp", 3}});
  using G = std::vector<std::vector<int64_t>>;
  REQUIRE(s.groups({"tp"}) == G{{0, 1, 2}, {3, 4, 5}});
  REQUIRE(s.groups({"dp"}) == G{{0, 3}, {1, 4}, {2, 5}});
  REQUIRE(s.groups({"dp", "tp"}) == G{{0, 1, 2, 3, 4, 5}});
  REQUIRE(s.groups({"tp", "dp"}) == G{{0, 3, 1, 4, 2, 5}});
  REQUIRE(s.groups({}) == G{{0}, {1}, {2}, {3}, {4}, {5}});
  REQUIRE(s.slice("tp", 1, 3).groups({"dp"}) == G{{1, 4}, {2, 5}});
}

TEST_CASE("a general strided view", "[shape]") {
  Shape v({"a", "b"}, {2, 3}, {1, 10}, 5);
  REQUIRE(v.ranks() == std::vector<int64_t>{5, 15, 25, 6, 16, 26});
  REQUIRE(v.coord_of(16) == Coord{1, 1});
  REQUIRE(v.to_string(true) == "{a=2, b=3} (strides [1, 10], offset 5)");
}

// ---------------------------------------------------------------------------
// Errors: each names the offending value.

TEST_CASE("bad input is InvalidArgument naming the value", "[shape][errors]") {
  Shape s({{"dp", 2}, {"tp", 4}});
  require_invalid([] { Shape({{"dp", 2}, {"dp", 4}}); }, "duplicate dimension name 'dp'");
  require_invalid([] { Shape({{"dp", 0}}); }, "non-positive size 0");
  require_invalid([] { Shape({{"dp", -3}}); }, "non-positive size -3");
  require_invalid([] { Shape({{"", 3}}); }, "must not be empty");
  require_invalid([] { Shape({"a", "b"}, {2, 2}, {1, 1}, 0); }, "overlap");
  require_invalid([] { Shape({"a"}, {2}, {0}, 0); }, "non-positive stride 0");
  require_invalid([&] { s.slice("pp", 0); }, "unknown mesh dimension 'pp'");
  require_invalid([&] { s.size("xx"); }, "unknown mesh dimension 'xx'");
  require_invalid([&] { s.slice("tp", 4); }, "index 4 out of range");
  require_invalid([&] { s.slice("tp", -1); }, "index -1 out of range");
  require_invalid([&] { s.slice("tp", 0, 5); }, "end 5 out of range");
  require_invalid([&] { s.slice("tp", 2, 2); }, "end 2 out of range");
  require_invalid([&] { s.slice("tp", 4, 4); }, "begin 4 out of range");
  require_invalid([&] { s.slice("tp", 0, 4, 0); }, "step 0");
  require_invalid([&] { s.slice("tp", 0, 4, -1); }, "step -1");
  require_invalid([&] { s.slice({{"tp", 1}, {"tp", 2}}); }, "dimension 'tp' given twice");
  require_invalid([&] { s.split("tp", {"a", "b"}, {3, -1}); }, "[3, -1] do not divide");
  require_invalid([&] { s.split("tp", {"a", "b"}, {2, 3}); }, "[2, 3] multiply to 6");
  require_invalid([&] { s.split("tp", {"a", "b"}, {-1, -1}); }, "more than one size to infer");
  require_invalid([&] { s.split("tp", {"a", "b"}, {0, 4}); }, "size 0 for 'a'");
  require_invalid([&] { s.split("tp", {"dp", "b"}, {2, 2}); }, "'dp' already names");
  require_invalid([&] { s.split("tp", {"a", "a"}, {2, 2}); }, "duplicate dimension name 'a'");
  require_invalid([&] { s.split("tp", {"a"}, {2, 2}); }, "1 names [a] but 2 sizes");
  require_invalid([&] { s.rename("tp", "dp"); }, "'dp' already names");
  require_invalid([&] { s.rename("zz", "yy"); }, "unknown mesh dimension 'zz'");
  require_invalid([&] { s.slice("tp", 0, 2).flatten("x"); }, "[0, 1, 4, 5]");
  require_invalid([&] { s.transpose("dp", "tp").flatten("x"); }, "is not dense");
  require_invalid([&] { s.permute({"dp"}); }, "order [dp]");
  require_invalid([&] { s.permute({"dp", "dp"}); }, "duplicate dimension name 'dp'");
  require_invalid([&] { s.rank_of(Coord{1, 4}); }, "index 4 out of range for dimension 'tp'");
  require_invalid([&] { s.rank_of(Coord{1}); }, "coordinate [1] has 1 entries");
  require_invalid([&] { s.rank_of(cox::NamedCoord{{"dp", 1}}); }, "no index for dimension 'tp'");
  require_invalid([&] { s.slice("tp", 1, 4, 2).coord_of(2); }, "rank 2 is not in");
  require_invalid([&] { s.slice("dp", 1).local_index(3); }, "rank 3 is not in");
  require_invalid([&] { s.groups({"tp", "tp"}); }, "duplicate dimension name 'tp'");
  require_invalid([&] { s.groups({"ep"}); }, "unknown mesh dimension 'ep'");
}

TEST_CASE("sizes whose product overflows int64 are refused, naming the dims", "[shape][errors]") {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  require_invalid([] { Shape({{"a", int64_t{1} << 62}, {"b", 8}}); }, "{a=4611686018427387904, b=8}");
  require_invalid([] { Shape({{"a", int64_t{1} << 62}, {"b", 8}}); }, "overflows int64");
  require_invalid([] { Shape({{"a", 3}, {"b", int64_t{1} << 31}, {"c", int64_t{1} << 31}}); },
                  "{a=3, b=2147483648, c=2147483648}");
  require_invalid([=] { Shape({{"a", kMax}, {"b", 2}}); }, "b=2");
  // A general view: the sizes, and the ranks the strides reach.
  require_invalid([] { Shape({"a", "b"}, {int64_t{1} << 62, 8}, {8, 1}, 0); }, "a=4611686018427387904, b=8");
  require_invalid([] { Shape({"a"}, {3}, {int64_t{1} << 62}, 0); }, "dimension 'a' (size 3, stride 4611686018427387904)");
  require_invalid([=] { Shape({"a"}, {2}, {1}, kMax); }, "offset 9223372036854775807");
  // Split sizes whose product overflows, with or without one to infer.
  Shape s({{"dp", 2}, {"tp", 4}});
  require_invalid([&] { s.split("tp", {"a", "b", "c"}, {int64_t{1} << 62, 8, -1}); }, "multiply past 2^63-1");
  require_invalid([&] { s.split("tp", {"a", "b"}, {int64_t{1} << 32, int64_t{1} << 32}); },
                  "sizes [4294967296, 4294967296] for [a, b]");

  // 2^63 ranks is one too many; meshes that fit work, and their last rank is right.
  require_invalid([] { Shape({{"a", int64_t{1} << 62}, {"b", 2}}); }, "{a=4611686018427387904, b=2}");
  Shape fits({{"a", (int64_t{1} << 61) - 1}, {"b", 4}});
  REQUIRE(fits.size() == ((int64_t{1} << 61) - 1) * 4);
  REQUIRE(fits.rank_of(Coord{(int64_t{1} << 61) - 2, 3}) == fits.size() - 1);
  REQUIRE(fits.coord_of(fits.size() - 1) == Coord{(int64_t{1} << 61) - 2, 3});
  // A step near 2^63 keeps one element (no overflow in the size or stride).
  Shape one = s.slice("tp", 1, 4, kMax);
  REQUIRE(one.sizes() == std::vector<int64_t>{2, 1});
  REQUIRE(one.ranks() == std::vector<int64_t>{1, 5});
  REQUIRE(one.strides()[1] > 0);
  Shape row = s.slice("dp", 0, 2, kMax);  // stride 4 * step does not fit
  REQUIRE(row.sizes() == std::vector<int64_t>{1, 4});
  REQUIRE(row.ranks() == std::vector<int64_t>{0, 1, 2, 3});
  REQUIRE(row.strides()[0] > 0);
  REQUIRE(row.flatten("f").ranks() == std::vector<int64_t>{0, 1, 2, 3});
}

// ---------------------------------------------------------------------------
// Property tests: random shapes up to 4 dims, random chains of operations,
// each step compared against the brute-force model.

namespace {

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> d;
  for (int64_t i = 1; i <= n; ++i) {
    if (n % i == 0) d.push_back(i);
  }
  return d;
}

}  // namespace

TEST_CASE("every operation agrees with brute-force enumeration", "[shape][property]") {
  const int seed = GENERATE(range(0, 300));
  std::mt19937 rng(static_cast<unsigned>(seed) * 7919u + 17u);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };

  int ndim = int(pick(1, 4));
  std::vector<std::pair<std::string, int64_t>> dims;
  for (int i = 0; i < ndim; ++i) dims.emplace_back("d" + std::to_string(i), pick(1, 4));
  Shape s(dims);
  Ref r = Ref::dense(dims);
  check_same(s, r);
  int fresh = 0;

  for (int step = 0; step < 6 && s.ndim() > 0; ++step) {
    const std::string name = s.names()[size_t(pick(0, int64_t(s.ndim()) - 1))];
    const int64_t n = s.size(name);
    INFO("seed " << seed << " step " << step << " on " << s.to_string(true) << " dim " << name);
    switch (pick(0, 5)) {
      case 0: {  // slice by index (slices of slices as the chain goes on)
        int64_t i = pick(0, n - 1);
        s = s.slice(name, i);
        r = r.slice(name, i);
        break;
      }
      case 1: {  // slice by range with a step
        int64_t b = pick(0, n - 1), e = pick(b + 1, n), st = pick(1, 3);
        s = s.slice(name, b, e, st);
        r = r.slice(name, b, e, st);
        break;
      }
      case 2: {  // split into two, one size inferred, then maybe flatten back
        auto ds = divisors(n);
        int64_t a = ds[size_t(pick(0, int64_t(ds.size()) - 1))];
        std::vector<std::string> nn = {"s" + std::to_string(fresh), "s" + std::to_string(fresh + 1)};
        fresh += 2;
        bool infer_first = pick(0, 1) == 1;
        s = s.split(name, nn, infer_first ? std::vector<int64_t>{-1, n / a} : std::vector<int64_t>{a, -1});
        r = r.split(name, nn, {a, n / a});
        check_same(s, r);
        if (pick(0, 1) == 1) {  // split-then-flatten round trip on the split pair
          Shape pair = s;
          for (auto& other : s.names()) {
            if (other != nn[0] && other != nn[1]) pair = pair.slice(other, 0);
          }
          REQUIRE(pair.is_flattenable());
          REQUIRE(pair.flatten("f").ranks() == pair.ranks());
        }
        break;
      }
      case 3: {  // permute randomly
        std::vector<std::string> order = s.names();
        std::shuffle(order.begin(), order.end(), rng);
        s = s.permute(order);
        r = r.permute(order);
        break;
      }
      case 4: {  // flatten when legal, else the error
        if (r.evenly_strided()) {
          std::string f = "f" + std::to_string(fresh++);
          Shape flat = s.flatten(f);
          REQUIRE(flat.ranks() == r.ranks);
          s = flat;
          r = Ref{{f}, {int64_t(r.ranks.size())}, r.ranks};
        } else {
          REQUIRE_THROWS_AS(s.flatten("f"), cox::InvalidArgument);
        }
        break;
      }
      case 5: {  // rename
        std::string to = "r" + std::to_string(fresh++);
        s = s.rename(name, to);
        r.names[r.dim(name)] = to;
        break;
      }
    }
    check_same(s, r);
    // Groups over a random subset of dims, in a random order.
    std::vector<std::string> sub;
    for (auto& d : s.names()) {
      if (pick(0, 1)) sub.push_back(d);
    }
    std::shuffle(sub.begin(), sub.end(), rng);
    REQUIRE(s.groups(sub) == r.groups(sub));
  }
}
