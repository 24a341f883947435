// Runs every file named on the command line (or found in the directories
// named) through LLVMFuzzerTestOneInput: the fuzz corpus as a regression test.
//
//   wire_fuzz_replay --write-seeds DIR   writes one seed per declared message
//                                        (and a fragmented one) into DIR
#include "wire/messages.hpp"

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

// A seed: the frame-limit byte (8: 4096 bytes), then the frames.
void write_seed(const std::filesystem::path& dir, const std::string& name, const std::vector<uint8_t>& frames) {
  std::ofstream out(dir / name, std::ios::binary);
  const char limit = 8;
  out.write(&limit, 1);
  out.write(reinterpret_cast<const char*>(frames.data()), static_cast<std::streamsize>(frames.size()));
}

int write_seeds(const std::filesystem::path& dir) {
  using namespace cox::wire;
  std::filesystem::create_directories(dir);
  int n = 0;
#define COX_SEED(Name, id, receiver, str) \
  write_seed(dir, str, encode_frame(Name{}));  \
  ++n;
  COX_WIRE_MESSAGES(COX_SEED)
#undef COX_SEED
  // A few with content: an op with arguments, data chunks, a message in fragments.
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
  write_seed(dir, "op_args", op);
  std::vector<uint8_t> bytes(300, 0x5a);
  PutData d;
  d.id = 3;
  d.offset = 64;
  d.data = Bytes{bytes.data(), bytes.size()};
  write_seed(dir, "put_data_bytes", encode_frame(d));
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
  write_seed(dir, "echo_fragmented", fragments);
  std::printf("wire_fuzz_replay: %d seeds written to %s\n", n + 3, dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-seeds") return write_seeds(argv[2]);
  size_t runs = 0;
  auto run = [&](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    ++runs;
  };
  for (int i = 1; i < argc; ++i) {
    std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (auto& e : std::filesystem::directory_iterator(p)) run(e.path());
    } else {
      run(p);
    }
  }
  std::printf("wire_fuzz_replay: %zu inputs, no crash\n", runs);
  return runs ? 0 : 1;
}
