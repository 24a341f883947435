// Authenticated sessions: after the handshake of an attach-mode (TCP)
// connection, every frame in both directions carries a 16-byte tag that
// proves it comes from the peer that proved the token, in this session, in
// this place of the stream.
//
// The tag is GMAC (AES-256-GCM over the frame as associated data, nothing
// encrypted): the control connection is authenticated, not encrypted. Each
// direction has its own key, derived from the token and both handshake
// nonces, so keys are fresh per connection; the 96-bit GCM nonce is the
// direction's frame sequence number, which both sides count and never send.
// So a frame that is injected, altered, replayed, reordered, or that follows
// a gap (bytes cut out of the stream) fails its tag, and the receiver closes
// the connection as a protocol error that says so.
//
// Wire format: a frame (u32 length, type, fields) then its tag; the length
// does not count the tag (wire::FrameScanner's `trailer`).
//
// Local mode (a Unix socket in a private 0700 directory, reachable only by
// this user) stays unauthenticated after its handshake: session_authenticated().
//
// Cost: one GMAC pass over each frame's bytes at the sender (on the thread
// that writes it out) and one at the receiver; one reused context per
// direction, only the nonce re-set per frame, no allocation. OpenSSL's GCM
// mode is driven directly (CRYPTO_gcm128_*, with AES-256 from an EVP ECB
// context as its block cipher): per frame that costs about 0.1 us where
// EVP's AES-GCM spends about 0.5 us re-reading parameters, and the bytes go
// through the same CLMUL GHASH (about 6 GB/s here).
#pragma once

#include "wire/messages.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

// OpenSSL's EVP_CIPHER_CTX and GCM128_CONTEXT, kept out of this header.
struct evp_cipher_ctx_st;
struct gcm128_context;

namespace cox::transport {

constexpr size_t kTagBytes = 16;
using SessionKey = std::array<uint8_t, 32>;

// One side's view of a session: the key (and next sequence number) of what
// it sends and of what it receives.
struct SessionKeys {
  SessionKey send{}, recv{};
  uint64_t send_seq = 0, recv_seq = 0;
};

enum class Side { kController, kWorker };

// HMAC-SHA256(token, "cox session v1" | direction | controller nonce |
// worker nonce | rank), one key per direction.
SessionKeys derive_session_keys(std::string_view token, const wire::Nonce& controller_nonce,
                                const wire::Nonce& worker_nonce, int32_t rank, Side side);

// For measuring what authentication costs, and for nothing else: with this
// set to 1 in the environment of the controller and of its workers alike,
// TCP sessions go untagged after the handshake (a worker says so on
// stderr). Whoever can set a process's environment can run code there
// anyway; an end that sets it alone cannot talk to one that does not.
constexpr const char* kBenchmarkUntaggedEnv = "COX_BENCHMARK_UNTAGGED_TCP";

// Whether frames on this connected socket are authenticated after the
// handshake: yes over TCP (attach mode), no over a Unix socket (local mode).
// Both ends decide it alike.
bool session_authenticated(int fd);

// GMAC tags for one direction's frames, in order. Not thread-safe: one
// writer (or one reader) at a time.
class FrameMac {
 public:
  FrameMac(const SessionKey& key, uint64_t first_seq);
  ~FrameMac();
  FrameMac(const FrameMac&) = delete;
  FrameMac& operator=(const FrameMac&) = delete;

  // The tag of the next frame, whose bytes are [a, a+an) then [b, b+bn)
  // (b may be empty): written to `tag`; the sequence number moves on.
  void seal(const uint8_t* a, size_t an, const uint8_t* b, size_t bn, uint8_t* tag);
  // Checks the next frame's tag (constant time); the sequence number moves
  // on. Throws cox::ProtocolError naming the frame when it does not match.
  void verify(const uint8_t* a, size_t an, const uint8_t* b, size_t bn, const uint8_t* tag);
  // A frame as wire::FrameScanner delivers it: header and type just before
  // the payload, the tag just after it.
  void verify(const wire::FrameView& f) {
    verify(f.payload - wire::kFrameHeaderBytes - 1, f.size + wire::kFrameHeaderBytes + 1, nullptr, 0,
           f.payload + f.size);
  }

  // Seals each frame of [p, p+n), which holds whole frames each followed by
  // kTagBytes reserved for its tag.
  void seal_frames(uint8_t* p, size_t n);

  uint64_t seq() const noexcept { return seq_; }

 private:
  void compute(const uint8_t* a, size_t an, const uint8_t* b, size_t bn, uint8_t* tag);

  evp_cipher_ctx_st* aes_ = nullptr;  // AES-256-ECB under the direction's key: GCM's block cipher
  gcm128_context* gcm_ = nullptr;
  uint64_t seq_;
};

// Appends the frames of [data, data+n) to `out`, each followed by kTagBytes
// zero bytes for its tag (FrameMac::seal_frames fills them).
void append_with_tag_room(std::vector<uint8_t>& out, const uint8_t* data, size_t n);

}  // namespace cox::transport
