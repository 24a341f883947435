// What the fuzz targets share: the input layout (a few prefix bytes, then
// frames), a structure-aware mutator that keeps frames well formed often
// enough to get past the header, and the seed writer.
//
// A target includes this file once and defines kPrefix (its prefix bytes)
// before it. In libFuzzer builds (COX_LIBFUZZER) the target gets
// LLVMFuzzerCustomMutator from COX_FUZZ_FRAME_MUTATOR(); replay builds get
// none, so that they link without libFuzzer.
#pragma once

#include "wire/messages.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace cox::fuzz {

// The frames of [data, data+n) as (offset, size) pairs, header included,
// as far as they are whole; a tail that is not a whole frame is dropped.
inline std::vector<std::pair<size_t, size_t>> split(const uint8_t* data, size_t n) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t at = 0;
  while (n - at >= wire::kFrameHeaderBytes) {
    uint32_t len;
    std::memcpy(&len, data + at, 4);
    if (len == 0 || len > n - at - wire::kFrameHeaderBytes) break;
    out.emplace_back(at, wire::kFrameHeaderBytes + len);
    at += wire::kFrameHeaderBytes + len;
  }
  return out;
}

// One frame of each declared message, default fields: what the mutator
// inserts.
inline const std::vector<std::vector<uint8_t>>& templates() {
  static const std::vector<std::vector<uint8_t>> t = [] {
    std::vector<std::vector<uint8_t>> v;
#define COX_FUZZ_TEMPLATE(Name, id, receiver, str) v.push_back(wire::encode_frame(wire::Name{}));
    COX_WIRE_MESSAGES(COX_FUZZ_TEMPLATE)
#undef COX_FUZZ_TEMPLATE
    return v;
  }();
  return t;
}

using MutateFn = size_t (*)(uint8_t* data, size_t size, size_t max_size);

// Mutates the frames after `prefix` bytes: a field changed inside one frame
// (its length fixed up), a frame inserted, dropped, duplicated or swapped,
// or the whole input left to libFuzzer's own mutations.
inline size_t mutate_frames(uint8_t* data, size_t size, size_t max_size, unsigned seed, size_t prefix,
                            MutateFn mutate) {
  std::minstd_rand rng(seed);
  if (size < prefix || rng() % 8 == 0) return mutate(data, size, max_size);
  std::vector<uint8_t> head(data, data + prefix);
  const uint8_t* body = data + prefix;
  const size_t body_n = size - prefix;
  auto frames = split(body, body_n);
  std::vector<std::vector<uint8_t>> fs;
  for (auto [at, n] : frames) fs.emplace_back(body + at, body + at + n);
  const unsigned op = rng() % 10;
  if (fs.empty() || op < 2) {
    const auto& t = templates();
    auto f = t[rng() % t.size()];
    fs.insert(fs.begin() + static_cast<std::ptrdiff_t>(fs.empty() ? 0 : rng() % (fs.size() + 1)), std::move(f));
  } else if (op < 7) {
    // Mutate one frame's type and fields; keep its length right.
    auto& f = fs[rng() % fs.size()];
    std::vector<uint8_t> payload(f.begin() + wire::kFrameHeaderBytes, f.end());
    const size_t room = payload.size() + 64;
    payload.resize(room);
    size_t k = mutate(payload.data(), f.size() - wire::kFrameHeaderBytes, room);
    if (k == 0) k = 1;
    payload.resize(k);
    if (rng() % 16 == 0) payload[0] = static_cast<uint8_t>(rng());
    const auto len = static_cast<uint32_t>(k);
    f.assign(4, 0);
    std::memcpy(f.data(), &len, 4);
    f.insert(f.end(), payload.begin(), payload.end());
  } else if (op == 7) {
    fs.erase(fs.begin() + static_cast<std::ptrdiff_t>(rng() % fs.size()));
  } else if (op == 8) {
    const size_t i = rng() % fs.size();
    fs.insert(fs.begin() + static_cast<std::ptrdiff_t>(rng() % (fs.size() + 1)), fs[i]);
  } else {
    std::swap(fs[rng() % fs.size()], fs[rng() % fs.size()]);
  }
  if (!head.empty() && rng() % 16 == 0) head[rng() % head.size()] = static_cast<uint8_t>(rng());
  std::vector<uint8_t> out = std::move(head);
  for (const auto& f : fs) out.insert(out.end(), f.begin(), f.end());
  if (out.size() > max_size) return mutate(data, size, max_size);
  std::memcpy(data, out.data(), out.size());
  return out.size();
}

inline void write_seed(const std::filesystem::path& dir, const std::string& name, const std::vector<uint8_t>& prefix,
                       const std::vector<uint8_t>& frames) {
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(prefix.data()), static_cast<std::streamsize>(prefix.size()));
  out.write(reinterpret_cast<const char*>(frames.data()), static_cast<std::streamsize>(frames.size()));
}

}  // namespace cox::fuzz

// Writes the target's seeds into DIR (wire_fuzz_replay --write-seeds DIR).
int cox_fuzz_write_seeds(const std::filesystem::path& dir);

#ifdef COX_LIBFUZZER
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);
#define COX_FUZZ_FRAME_MUTATOR(prefix)                                                                       \
  extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) { \
    return cox::fuzz::mutate_frames(data, size, max_size, seed, prefix, &LLVMFuzzerMutate);                   \
  }
#else
#define COX_FUZZ_FRAME_MUTATOR(prefix)
#endif
