// A caching allocator for CPU workers' large tensors.
//
// A training step allocates the same large buffers every step (activations,
// gradients, collective results). From glibc every such block above its mmap
// threshold is fresh memory: a page fault per page and the kernel's zeroing,
// which on a VM costs as much as the work itself. Blocks of 256 KiB and more
// are kept on free lists instead and reused for requests of about their
// size; smaller ones come from malloc and go back to it. The cache holds at most
// a set number of bytes ($COX_CPU_CACHE_BYTES, default 1 GiB; 0 disables
// it) and is emptied when an allocation fails.
#pragma once

#include <cstddef>

namespace cox::worker {

// Makes the caching allocator libtorch's CPU allocator in this process.
// Returns false when $COX_CPU_CACHE_BYTES is 0.
bool install_caching_cpu_allocator();

// Bytes now held on the free lists (for tests and statistics).
size_t cached_cpu_bytes();

}  // namespace cox::worker
