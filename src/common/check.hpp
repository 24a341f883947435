// Two error channels, after c10: COX_CHECK_ARG for the caller's mistakes
// (throws cox::InvalidArgument with the offending values in the message) and
// COX_INTERNAL_ASSERT for our own invariants (throws cox::InternalError).
// Neither aborts.
#pragma once

#include <cox/errors.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#define COX_CHECK_ARG(cond, ...)                                    \
  do {                                                              \
    if (__builtin_expect(!(cond), 0)) {                             \
      throw ::cox::InvalidArgument(::fmt::format(__VA_ARGS__));     \
    }                                                               \
  } while (0)

#define COX_INTERNAL_ASSERT(cond, ...)                                                   \
  do {                                                                                   \
    if (__builtin_expect(!(cond), 0)) {                                                  \
      throw ::cox::InternalError(::fmt::format("internal error at {}:{}: {} ({})",       \
                                               __FILE__, __LINE__, #cond,                \
                                               ::fmt::format(__VA_ARGS__)));             \
    }                                                                                    \
  } while (0)
