// Coxswain's ops in libtorch's dispatcher (src/ops/*.cpp) register
// themselves when their object file is linked in; code that needs them calls
// this (defined there), so that the linker keeps them.
#pragma once

namespace cox::ops_detail {
void ensure_registered();
}  // namespace cox::ops_detail
