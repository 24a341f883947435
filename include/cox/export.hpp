// Symbol visibility for Coxswain's public API.
#pragma once

#if defined(_WIN32)
#define COX_API
#else
#define COX_API __attribute__((visibility("default")))
#endif
