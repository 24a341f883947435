// Authentication of attaching workers: a shared secret token and an HMAC
// challenge-response in both directions (OpenSSL's libcrypto does the
// cryptography). The token never travels and never appears on a command line:
// workers read it from $COX_TOKEN or from a file named by $COX_TOKEN_FILE that
// only its owner can read.
#pragma once

#include "wire/messages.hpp"

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

// The worker's token: $COX_TOKEN, else the file named by $COX_TOKEN_FILE
// (refused when group or others may read it). Throws cox::InvalidArgument
// saying what is missing or wrong.
std::string load_worker_token();

}  // namespace cox::transport
