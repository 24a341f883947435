// Fuzz target for the frame scanner, the fragment assembler and every
// message decoder: any byte stream must end in messages that decode or in a
// ProtocolError, never a crash, a hang or a read out of bounds. Each
// message that decodes is dispatched as its receiver would, printed, and
// encoded again: what the encoder writes must decode.
//
// Input: one byte that picks the frame size limit (as a peer's settings
// would), then frames.
//
// Built as a libFuzzer target with -DCOX_BUILD_FUZZERS=ON (clang; see
// scripts/fuzz), and always as wire_fuzz_replay, which runs the checked-in
// corpus (tests/fuzz/corpus/wire) through the same entry point as a
// regression test.
#include "fuzz/fuzz_common.hpp"

#include <cstdio>
#include <cstdlib>

namespace {

using namespace cox::wire;

// Every message a receiver accepts: encoded again, and that must decode.
struct Reencode {
  template <class M>
  void on(const M& m) {
    const auto frame = encode_frame(m);
    const FrameView f{Traits<M>::type, frame.data() + kFrameHeaderBytes + 1, frame.size() - kFrameHeaderBytes - 1};
    try {
      (void)decode<M>(f);
    } catch (const cox::ProtocolError& e) {
      std::fprintf(stderr, "wire_fuzz: a re-encoded %s does not decode: %s\n", Traits<M>::name, e.what());
      std::abort();
    }
    (void)to_string(m);
  }
};

void run_frame(const FrameView& f) {
  try {
    validate(f);
  } catch (const cox::ProtocolError&) {
    (void)describe(f);
    return;
  }
  (void)describe(f);
  for (Dir d : {Dir::kToWorker, Dir::kToController}) {
    try {
      if (d == Dir::kToWorker) {
        dispatch<Dir::kToWorker>(f, Reencode{});
      } else {
        dispatch<Dir::kToController>(f, Reencode{});
      }
    } catch (const cox::ProtocolError&) {
      // addressed elsewhere
    }
  }
}

}  // namespace

COX_FUZZ_FRAME_MUTATOR(1)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t max_frame = size_t{16} << (data[0] % 16);
  FrameScanner scanner(max_frame);
  Assembler assembler;
  try {
    size_t need = 0;
    scanner.scan(data + 1, size - 1, [&](const FrameView& f) {
      auto whole = assembler.feed(f);
      if (whole) run_frame(*whole);
    }, &need);
    // The scanner one frame at a time, as the worker's reader uses it.
    std::optional<FrameView> one;
    (void)scanner.scan_one(data + 1, size - 1, &one, &need);
  } catch (const cox::ProtocolError&) {
  }
  return 0;
}

// A seed per declared message, one with op arguments, a data chunk and a
// message in fragments. The limit byte 8 is 4096 bytes.
int cox_fuzz_write_seeds(const std::filesystem::path& dir) {
  const std::vector<uint8_t> limit{8};
  int n = 0;
#define COX_SEED(Name, id, receiver, str)                              \
  cox::fuzz::write_seed(dir, str, limit, encode_frame(Name{})); \
  ++n;
  COX_WIRE_MESSAGES(COX_SEED)
#undef COX_SEED
  std::vector<uint8_t> op;
  append_frame(op, MsgType::kOp, [](Writer& w) {
    w.put<uint32_t>(1);
    w.put<uint16_t>(3);
    w.put<uint8_t>(static_cast<uint8_t>(ArgTag::kTensor));
    w.put<uint64_t>(7);
    w.put<uint8_t>(static_cast<uint8_t>(ArgTag::kIntList));
    w.put<uint16_t>(2);
    w.put<int64_t>(4);
    w.put<int64_t>(5);
    w.put<uint8_t>(static_cast<uint8_t>(ArgTag::kString));
    w.put_string("mean");
    w.put<uint32_t>(1);
    w.put<uint64_t>(8);
    w.put<uint64_t>(0);
    w.put<int32_t>(-1);
  });
  cox::fuzz::write_seed(dir, "op_args", limit, op);
  std::vector<uint8_t> bytes(300, 0x5a);
  PutData d;
  d.id = 3;
  d.offset = 64;
  d.data = Bytes{bytes.data(), bytes.size()};
  cox::fuzz::write_seed(dir, "put_data_bytes", limit, encode_frame(d));
  Echo big;
  big.payload.assign(10000, 'e');
  const auto whole = encode_frame(big);
  std::vector<uint8_t> fragments;
  split_frames(
      whole.data(), whole.size(), 4096, [&](const uint8_t* p, size_t k) { fragments.insert(fragments.end(), p, p + k); },
      [&](const std::array<uint8_t, kFragmentOverhead>& h, const uint8_t* p, size_t k, bool) {
        fragments.insert(fragments.end(), h.begin(), h.end());
        fragments.insert(fragments.end(), p, p + k);
      });
  cox::fuzz::write_seed(dir, "echo_fragmented", limit, fragments);
  return n + 3;
}
