// Session keys and per-frame GMAC tags (OpenSSL's libcrypto).
#include "transport/session_mac.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/modes.h>

#include <sys/socket.h>

#include <climits>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string_view>

namespace cox::transport {
namespace {

SessionKey derive(std::string_view token, std::string_view direction, const wire::Nonce& controller_nonce,
                  const wire::Nonce& worker_nonce, int32_t rank) {
  std::vector<uint8_t> msg;
  const std::string_view label = "cox session v1";
  msg.insert(msg.end(), label.begin(), label.end());
  msg.push_back(0);
  msg.insert(msg.end(), direction.begin(), direction.end());
  msg.push_back(0);
  msg.insert(msg.end(), controller_nonce.begin(), controller_nonce.end());
  msg.insert(msg.end(), worker_nonce.begin(), worker_nonce.end());
  for (int i = 0; i < 4; ++i) msg.push_back(static_cast<uint8_t>(static_cast<uint32_t>(rank) >> (8 * i)));
  SessionKey key{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), msg.data(), msg.size(), key.data(), &len) ||
      len != key.size()) {
    throw Error("OpenSSL HMAC-SHA256 failed to derive a session key");
  }
  return key;
}

void gcm_failed(const char* what) { throw Error(fmt::format("OpenSSL AES-GCM: {} failed", what)); }

}  // namespace

SessionKeys derive_session_keys(std::string_view token, const wire::Nonce& controller_nonce,
                                const wire::Nonce& worker_nonce, int32_t rank, Side side) {
  const SessionKey to_worker = derive(token, "controller to worker", controller_nonce, worker_nonce, rank);
  const SessionKey to_controller = derive(token, "worker to controller", controller_nonce, worker_nonce, rank);
  SessionKeys k;
  k.send = side == Side::kController ? to_worker : to_controller;
  k.recv = side == Side::kController ? to_controller : to_worker;
  return k;
}

bool session_authenticated(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  // A socket we cannot name is treated as remote: authenticated.
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return true;
  if (ss.ss_family == AF_UNIX) return false;
  const char* untagged = std::getenv(kBenchmarkUntaggedEnv);
  if (!(untagged && std::string_view(untagged) == "1")) return true;
  static std::once_flag warned;
  std::call_once(warned, [] {
    std::fprintf(stderr, "cox: warning: $%s=1: TCP sessions are not authenticated (for benchmarks only)\n",
                 kBenchmarkUntaggedEnv);
  });
  return false;
}

namespace {

// GCM's block function: one AES block through the ECB context.
void aes_block(const unsigned char in[16], unsigned char out[16], const void* ctx) {
  int n = 0;
  // Cannot fail for a 16-byte block on an initialised ECB context.
  EVP_EncryptUpdate(static_cast<EVP_CIPHER_CTX*>(const_cast<void*>(ctx)), out, &n, in, 16);
}

}  // namespace

FrameMac::FrameMac(const SessionKey& key, uint64_t first_seq) : seq_(first_seq) {
  aes_ = EVP_CIPHER_CTX_new();
  if (!aes_) gcm_failed("EVP_CIPHER_CTX_new");
  // The key schedule once; per frame only the nonce is set.
  if (EVP_EncryptInit_ex(aes_, EVP_aes_256_ecb(), nullptr, key.data(), nullptr) != 1 ||
      EVP_CIPHER_CTX_set_padding(aes_, 0) != 1) {
    EVP_CIPHER_CTX_free(aes_);
    gcm_failed("key setup");
  }
  gcm_ = CRYPTO_gcm128_new(aes_, aes_block);
  if (!gcm_) {
    EVP_CIPHER_CTX_free(aes_);
    gcm_failed("CRYPTO_gcm128_new");
  }
}

FrameMac::~FrameMac() {
  CRYPTO_gcm128_release(gcm_);
  EVP_CIPHER_CTX_free(aes_);
}

void FrameMac::compute(const uint8_t* a, size_t an, const uint8_t* b, size_t bn, uint8_t* tag) {
  // 96-bit nonce: the sequence number, then zeros. Never repeats under a
  // key: keys are fresh per connection and per direction, and 2^64 frames
  // are never sent.
  uint8_t iv[12] = {};
  std::memcpy(iv, &seq_, sizeof seq_);
  ++seq_;
  CRYPTO_gcm128_setiv(gcm_, iv, sizeof iv);
  // (Associated data is limited to 2^61 bytes; a frame has at most 2^32.)
  if (CRYPTO_gcm128_aad(gcm_, a, an) != 0 || (bn && CRYPTO_gcm128_aad(gcm_, b, bn) != 0)) gcm_failed("GMAC update");
  CRYPTO_gcm128_tag(gcm_, tag, kTagBytes);
}

void FrameMac::seal(const uint8_t* a, size_t an, const uint8_t* b, size_t bn, uint8_t* tag) {
  compute(a, an, b, bn, tag);
}

void FrameMac::verify(const uint8_t* a, size_t an, const uint8_t* b, size_t bn, const uint8_t* tag) {
  const uint64_t seq = seq_;
  uint8_t expected[kTagBytes];
  compute(a, an, b, bn, expected);
  if (CRYPTO_memcmp(expected, tag, kTagBytes) != 0) {
    // The header was read unauthenticated: shown for diagnosis only.
    const uint8_t type = an > wire::kFrameHeaderBytes ? a[wire::kFrameHeaderBytes] : 0;
    throw ProtocolError(fmt::format(
        "authentication failed: frame {} of this session (type {}, {} bytes) does not carry its tag "
        "(injected, altered, replayed or out of order)",
        seq, wire::is_known_type(type) ? wire::to_string(static_cast<wire::MsgType>(type)) : "unknown",
        an + bn - wire::kFrameHeaderBytes));
  }
}

void FrameMac::seal_frames(uint8_t* p, size_t n) {
  size_t at = 0;
  while (at < n) {
    uint32_t len;
    std::memcpy(&len, p + at, sizeof len);
    const size_t frame = wire::kFrameHeaderBytes + len;
    compute(p + at, frame, nullptr, 0, p + at + frame);
    at += frame + kTagBytes;
  }
}

void append_with_tag_room(std::vector<uint8_t>& out, const uint8_t* data, size_t n) {
  size_t at = 0;
  while (at < n) {
    uint32_t len;
    std::memcpy(&len, data + at, sizeof len);
    const size_t frame = wire::kFrameHeaderBytes + len;
    out.insert(out.end(), data + at, data + at + frame);
    out.insert(out.end(), kTagBytes, uint8_t{0});
    at += frame;
  }
}

}  // namespace cox::transport
