// Runs every file named on the command line (or found in the directories
// named) through a fuzz target's LLVMFuzzerTestOneInput: its corpus as a
// regression test, in builds without libFuzzer.
//
//   <target>_replay --write-seeds DIR   writes the target's seeds into DIR
//                                       (scripts/fuzz-seeds: all targets)
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int cox_fuzz_write_seeds(const std::filesystem::path& dir);

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-seeds") {
    const int n = cox_fuzz_write_seeds(argv[2]);
    std::printf("%s: %d seeds written to %s\n", argv[0], n, argv[2]);
    return 0;
  }
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
  std::printf("%s: %zu inputs, no crash\n", argv[0], runs);
  return runs ? 0 : 1;
}
