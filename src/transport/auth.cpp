// Token generation, HMAC proofs and token loading.
#include "transport/auth.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace cox::transport {
namespace {

void random_bytes(uint8_t* out, size_t n) {
  if (RAND_bytes(out, static_cast<int>(n)) != 1) {
    throw Error("OpenSSL RAND_bytes failed to produce random bytes");
  }
}

}  // namespace

std::string generate_token() {
  uint8_t raw[32];
  random_bytes(raw, sizeof raw);
  std::string hex;
  for (uint8_t b : raw) hex += fmt::format("{:02x}", b);
  return hex;
}

wire::Nonce random_nonce() {
  wire::Nonce n;
  random_bytes(n.data(), n.size());
  return n;
}

wire::Mac prove(std::string_view token, std::string_view role, const wire::Nonce& nonce, int32_t rank) {
  std::vector<uint8_t> msg(role.begin(), role.end());
  msg.push_back(0);
  msg.insert(msg.end(), nonce.begin(), nonce.end());
  for (int i = 0; i < 4; ++i) msg.push_back(static_cast<uint8_t>(static_cast<uint32_t>(rank) >> (8 * i)));
  wire::Mac mac{};
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), msg.data(), msg.size(), mac.data(), &len) ||
      len != mac.size()) {
    throw Error("OpenSSL HMAC-SHA256 failed");
  }
  return mac;
}

bool same_mac(const wire::Mac& a, const wire::Mac& b) noexcept {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string load_worker_token() {
  if (const char* t = std::getenv(kTokenEnv); t && *t) return t;
  const char* path = std::getenv(kTokenFileEnv);
  if (!path || !*path) {
    throw InvalidArgument(fmt::format("no token: set ${} or ${} (a file readable by its owner only)", kTokenEnv,
                                      kTokenFileEnv));
  }
  struct stat st {};
  if (::stat(path, &st) != 0) {
    throw InvalidArgument(fmt::format("token file '{}' (${}): {}", path, kTokenFileEnv, std::strerror(errno)));
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    throw InvalidArgument(fmt::format("token file '{}' has mode {:o}: group and others must have no access "
                                      "(chmod 600 {})",
                                      path, st.st_mode & 0777, path));
  }
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string token = ss.str();
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) throw InvalidArgument(fmt::format("token file '{}' is empty", path));
  return token;
}

}  // namespace cox::transport
