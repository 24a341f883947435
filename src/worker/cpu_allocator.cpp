// The caching CPU allocator.
#include "worker/cpu_allocator.hpp"

#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace cox::worker {
namespace {

constexpr size_t kMinCached = size_t{256} << 10;
constexpr size_t kAlignment = 64;
constexpr size_t kHeader = 64;  // the block's size lives in front of its data
constexpr size_t kPage = 4096;

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(size_t limit) : limit_(limit) {}

  // libtorch 1.13 declares allocate() const, 2.x non-const: both are here,
  // and whichever the base declares is the override.
  // Every block carries its size in a header in front of its data, and the
  // context is the data pointer itself, as raw_allocate() requires.
  c10::DataPtr allocate(size_t n) const {
    void* base = nullptr;
    if (n + kHeader < kMinCached) {
      base = fresh(n + kHeader);
    } else {
      const size_t size = (n + kHeader + kPage - 1) / kPage * kPage;
      base = take(size);
      if (!base) base = fresh(size);
    }
    void* data = static_cast<char*>(base) + kHeader;
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DataPtr allocate(size_t n) { return std::as_const(*this).allocate(n); }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  // Required by libtorch 2.x.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  size_t cached() const {
    std::lock_guard<std::mutex> lk(mu_);
    return cached_;
  }

  static CachingCpuAllocator* instance;

 private:
  // A cached block of at least `size` bytes and at most a quarter more.
  void* take(size_t size) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) return nullptr;
    void* base = it->second;  // its header still holds its own size
    cached_ -= it->first;
    free_.erase(it);
    return base;
  }

  void* fresh(size_t size) const {
    void* base = nullptr;
    if (::posix_memalign(&base, kAlignment, size) != 0) {
      empty_cache();
      if (::posix_memalign(&base, kAlignment, size) != 0) {
        TORCH_CHECK_WITH(OutOfMemoryError, false, "cox-worker: cannot allocate ", size, " bytes of CPU memory");
      }
    }
    std::memcpy(base, &size, sizeof size);
    return base;
  }

  void give_back(void* base) const {
    size_t size;
    std::memcpy(&size, base, sizeof size);
    if (size < kMinCached) return std::free(base);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (cached_ + size <= limit_) {
        free_.emplace(size, base);
        cached_ += size;
        return;
      }
    }
    std::free(base);
  }

  void empty_cache() const {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lk(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& [size, base] : blocks) std::free(base);
  }

  static void release(void* data) { instance->give_back(static_cast<char*>(data) - kHeader); }

  const size_t limit_;
  mutable std::mutex mu_;
  mutable std::multimap<size_t, void*> free_;
  mutable size_t cached_ = 0;
};

CachingCpuAllocator* CachingCpuAllocator::instance = nullptr;
}  // namespace

bool install_caching_cpu_allocator() {
  size_t limit = size_t{1} << 30;
  if (const char* env = std::getenv("COX_CPU_CACHE_BYTES"); env && *env) limit = std::stoull(env);
  if (limit == 0) return false;
  // Never destroyed: tensors may be freed during static destruction.
  static auto* alloc = new CachingCpuAllocator(limit);
  CachingCpuAllocator::instance = alloc;
  c10::SetAllocator(c10::DeviceType::CPU, alloc);
  return true;
}

size_t cached_cpu_bytes() { return CachingCpuAllocator::instance ? CachingCpuAllocator::instance->cached() : 0; }

}  // namespace cox::worker
