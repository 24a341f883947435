// Fuzz target for the frame scanner, the fragment assembler and every
// message decoder: any byte stream must end in messages that decode or in a
// ProtocolError, never a crash, a hang or a read out of bounds.
//
// Built as a libFuzzer target with -DCOX_BUILD_FUZZERS=ON (clang; see
// scripts/fuzz), and always as wire_fuzz_replay, which runs the checked-in
// corpus through the same entry point as a regression test (and writes a
// seed per message with --write-seeds).
#include "wire/messages.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first byte picks the frame size limit, as a peer's settings would.
  if (size == 0) return 0;
  const size_t max_frame = size_t{16} << (data[0] % 16);
  cox::wire::FrameScanner scanner(max_frame);
  cox::wire::Assembler assembler;
  try {
    size_t need = 0;
    scanner.scan(data + 1, size - 1, [&](const cox::wire::FrameView& f) {
      auto whole = assembler.feed(f);
      if (!whole) return;
      try {
        cox::wire::validate(*whole);
        (void)cox::wire::describe(*whole);
      } catch (const cox::ProtocolError&) {
      }
    }, &need);
  } catch (const cox::ProtocolError&) {
  }
  return 0;
}
