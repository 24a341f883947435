// Small helpers shared by the benchmarks: timing statistics and JSON output.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

namespace cox::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Stats {
  double median = 0, mean = 0, p90 = 0, min = 0;
};

inline Stats stats(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.median = v[v.size() / 2];
  s.p90 = v[v.size() * 9 / 10];
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  return s;
}

// The options every benchmark takes: --quick (a short run, as gpu-check
// uses), --tiny (the smallest sizes that still run every path: what the
// benchmarks' CTest runs; implies --quick) and --json FILE. Returns false
// (after printing usage) on anything else.
struct Options {
  bool quick = false;
  bool tiny = false;
  std::string json;
  std::string device = "cpu";  // where the workers run: cpu or cuda
};

// A benchmark's main: run(argc, argv), its exceptions reported as one line.
template <class Run>
int guarded_main(const char* name, int argc, char** argv, Run run) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }
}

inline bool parse_options(int argc, char** argv, const char* name, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--tiny") {
      o.quick = o.tiny = true;
    } else if (a == "--json" && i + 1 < argc) {
      o.json = argv[++i];
    } else if (a == "--device" && i + 1 < argc && (std::string(argv[i + 1]) == "cpu" || std::string(argv[i + 1]) == "cuda")) {
      o.device = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--quick | --tiny] [--json FILE] [--device cpu|cuda]\n", name);
      return false;
    }
  }
  return true;
}

// Collects measurements and writes them as a JSON array, one object each:
// "bench", "case", "value", "unit", and where the benchmark has a baseline
// from the same run, "baseline" and "ratio" (the benchmark's table says which
// way the ratio reads), plus whatever else describes the case.
class JsonRows {
 public:
  void add(std::map<std::string, std::string> strings, std::map<std::string, double> numbers) {
    std::string row = "{";
    bool first = true;
    for (auto& [k, v] : strings) {
      row += (first ? "" : ", ") + ("\"" + k + "\": \"" + v + "\"");
      first = false;
    }
    for (auto& [k, v] : numbers) {
      // Whole numbers (sizes, counts) exactly; measurements to 6 digits.
      char num[64];
      const bool whole = v == std::floor(v) && std::fabs(v) < 9007199254740992.0;  // 2^53
      std::snprintf(num, sizeof num, whole ? "%.0f" : "%.6g", v);
      row += (first ? "" : ", ") + ("\"" + k + "\": " + num);
      first = false;
    }
    rows_.push_back(row + "}");
  }
  bool write(const std::string& path) const {
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return false;
    std::fprintf(f, "[\n");
    for (size_t i = 0; i < rows_.size(); ++i) std::fprintf(f, "  %s%s\n", rows_[i].c_str(), i + 1 < rows_.size() ? "," : "");
    std::fprintf(f, "]\n");
    std::fclose(f);
    return true;
  }

 private:
  std::vector<std::string> rows_;
};

}  // namespace cox::bench
