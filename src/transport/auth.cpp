// Token generation, HMAC proofs and token loading.
#include "transport/auth.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

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

void check_token(std::string_view token, std::string_view where) {
  if (token.size() < kMinTokenBytes) {
    throw InvalidArgument(fmt::format("the token from {} has {} bytes; at least {} are required (a random one: "
                                      "openssl rand -hex 32)",
                                      where, token.size(), kMinTokenBytes));
  }
}

namespace {

std::string read_token_file(const char* path) {
  // Opened once; everything is checked on this descriptor, so the file
  // cannot be swapped between the check and the read. O_NONBLOCK: a FIFO
  // put in its place does not hang us (it is refused below).
  const int fd = ::open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP) {
      throw InvalidArgument(fmt::format("token file '{}' (${}) is a symbolic link; name the file itself", path,
                                        kTokenFileEnv));
    }
    throw InvalidArgument(fmt::format("token file '{}' (${}): {}", path, kTokenFileEnv, std::strerror(err)));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    throw InvalidArgument(fmt::format("token file '{}': fstat failed: {}", path, std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) throw InvalidArgument(fmt::format("token file '{}' is not a regular file", path));
  if (st.st_uid != ::geteuid()) {
    throw InvalidArgument(fmt::format("token file '{}' belongs to uid {}, not to this user (uid {})", path,
                                      st.st_uid, ::geteuid()));
  }
  if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    throw InvalidArgument(fmt::format("token file '{}' has mode {:o}: group and others must have no access "
                                      "(chmod 600 {})",
                                      path, st.st_mode & 0777, path));
  }
  std::string token;
  char buf[4096];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r > 0) {
      token.append(buf, static_cast<size_t>(r));
      if (token.size() > (size_t{1} << 20)) throw InvalidArgument(fmt::format("token file '{}' is too large", path));
      continue;
    }
    if (r == 0) break;
    if (errno == EINTR) continue;
    throw InvalidArgument(fmt::format("token file '{}': read failed: {}", path, std::strerror(errno)));
  }
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) throw InvalidArgument(fmt::format("token file '{}' is empty", path));
  check_token(token, fmt::format("token file '{}'", path));
  return token;
}

}  // namespace

std::optional<std::string> token_from_environment() {
  if (const char* t = std::getenv(kTokenEnv); t && *t) {
    check_token(t, std::string("$") + kTokenEnv);
    return std::string(t);
  }
  const char* path = std::getenv(kTokenFileEnv);
  if (!path || !*path) return std::nullopt;
  return read_token_file(path);
}

std::string load_worker_token() {
  if (auto token = token_from_environment()) return *token;
  throw InvalidArgument(fmt::format("no token: set ${} or ${} (a file readable by its owner only)", kTokenEnv,
                                    kTokenFileEnv));
}

}  // namespace cox::transport
