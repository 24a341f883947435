// Authentication of attaching workers: a shared secret token and an HMAC
// challenge-response in both directions (OpenSSL's libcrypto does the
// cryptography). The token never travels and never appears on a command line:
// workers (and an attaching controller given none) read it from $COX_TOKEN
// or from a file named by $COX_TOKEN_FILE that only its owner can read.
#pragma once

#include "wire/messages.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace cox::transport {

constexpr const char* kTokenEnv = "COX_TOKEN";
constexpr const char* kTokenFileEnv = "COX_TOKEN_FILE";

// 32 random bytes as 64 hex digits.
std::string generate_token();
wire::Nonce random_nonce();

// HMAC-SHA256 keyed by the token over role | nonce | rank. The role keeps
// a worker's proof from being replayed as the controller's.
wire::Mac prove(std::string_view token, std::string_view role, const wire::Nonce& nonce, int32_t rank);
// Constant-time comparison.
bool same_mac(const wire::Mac& a, const wire::Mac& b) noexcept;

// Tokens shorter than this are refused: a short secret can be guessed.
constexpr size_t kMinTokenBytes = 16;

// Throws cox::InvalidArgument when `token` is shorter than kMinTokenBytes;
// `where` says where it came from ("ControllerOptions::token", "$COX_TOKEN").
void check_token(std::string_view token, std::string_view where);

// The token from the environment: $COX_TOKEN when set and not empty, else
// the file named by $COX_TOKEN_FILE, else nullopt. The file is opened once,
// without following a symbolic link, and checked on the open descriptor: a
// regular file, owned by this user (the effective uid), with no access for
// group or others. Throws cox::InvalidArgument saying what is wrong (a
// short token included).
std::optional<std::string> token_from_environment();

// The worker's token: token_from_environment(), which must find one.
std::string load_worker_token();

}  // namespace cox::transport
