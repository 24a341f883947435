// The Gloo communicator: Gloo's own algorithms where it has them (allreduce,
// allgather, alltoall, broadcast, barrier), a ring over its unbound buffers
// for reduce-scatter, and its unbound buffers for point to point.
#include "collectives/gloo.hpp"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/context.h>
#include <gloo/transport/context.h>
#include <gloo/transport/device.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>

#include <gloo/transport/tcp/address.h>

#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>

namespace cox::collectives {
namespace {

// Slots of our own point-to-point traffic, apart from the prefixes of
// Gloo's algorithms (gloo/types.h uses 0x01-0x08): prefix in the top byte,
// then a per-call tag, then a step.
constexpr uint8_t kReduceScatterPrefix = 0x41;
constexpr uint8_t kStatusPrefix = 0x42;
constexpr uint8_t kPointToPointPrefix = 0x43;

uint64_t slot(uint8_t prefix, uint64_t tag, uint32_t step = 0) {
  return (uint64_t{prefix} << 56) | ((tag & 0xffffffffu) << 24) | (step & 0xffffffu);
}

struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(BFloat16) == 2);

// Arithmetic in float for the 16-bit types, natively for the rest.
template <class T>
struct Arith {
  using Wide = T;
  static Wide load(T v) { return v; }
  static T store(Wide v) { return v; }
};
template <>
struct Arith<gloo::float16> {
  using Wide = float;
  static float load(gloo::float16 v) { return gloo::cpu_half2float(v); }
  static gloo::float16 store(float v) { return gloo::cpu_float2half_rn(v); }
};
template <>
struct Arith<BFloat16> {
  using Wide = float;
  static float load(BFloat16 v) {
    const uint32_t u = uint32_t{v.bits} << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static BFloat16 store(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return BFloat16{static_cast<uint16_t>(u >> 16)};
  }
};

template <class T, class Op>
void elementwise(void* c_, const void* a_, const void* b_, size_t n, Op op) {
  using A = Arith<T>;
  T* c = static_cast<T*>(c_);
  const T* a = static_cast<const T*>(a_);
  const T* b = static_cast<const T*>(b_);
  for (size_t i = 0; i < n; ++i) c[i] = A::store(op(A::load(a[i]), A::load(b[i])));
}

template <class T>
gloo::AllreduceOptions::Func reduce_fn(ReduceOp op) {
  using W = typename Arith<T>::Wide;
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return [](void* c, const void* a, const void* b, size_t n) {
        elementwise<T>(c, a, b, n, [](W x, W y) { return static_cast<W>(x + y); });
      };
    case ReduceOp::kProduct:
      return [](void* c, const void* a, const void* b, size_t n) {
        elementwise<T>(c, a, b, n, [](W x, W y) { return static_cast<W>(x * y); });
      };
    case ReduceOp::kMin:
      return [](void* c, const void* a, const void* b, size_t n) {
        elementwise<T>(c, a, b, n, [](W x, W y) { return y < x ? y : x; });
      };
    case ReduceOp::kMax:
      return [](void* c, const void* a, const void* b, size_t n) {
        elementwise<T>(c, a, b, n, [](W x, W y) { return y > x ? y : x; });
      };
  }
  throw CommError("unknown reduce op");
}

// Divides a sum by the group size, for Avg (integers truncate toward zero).
template <class T>
void divide(void* data, size_t n, int by) {
  using A = Arith<T>;
  using W = typename A::Wide;
  T* p = static_cast<T*>(data);
  for (size_t i = 0; i < n; ++i) p[i] = A::store(static_cast<W>(A::load(p[i]) / static_cast<W>(by)));
}

template <class F>
decltype(auto) with_type(DataType t, F&& f) {
  switch (t) {
    case DataType::kFloat32: return f(float{});
    case DataType::kFloat64: return f(double{});
    case DataType::kFloat16: return f(gloo::float16{});
    case DataType::kBFloat16: return f(BFloat16{});
    case DataType::kInt64: return f(int64_t{});
    case DataType::kInt32: return f(int32_t{});
    case DataType::kInt8: return f(int8_t{});
    case DataType::kUInt8: return f(uint8_t{});
  }
  throw CommError("unknown data type");
}

// gloo::Context with the transport context set from outside: connected
// through our rendezvous rather than a Store.
class Context final : public gloo::Context {
 public:
  Context(int rank, int size, std::chrono::milliseconds timeout) : gloo::Context(rank, size) { setTimeout(timeout); }
  void set_transport(std::shared_ptr<gloo::transport::Device> device,
                     std::shared_ptr<gloo::transport::Context> transport) {
    device_ = std::move(device);
    transportContext_ = std::move(transport);
  }
};

// Whether two socket addresses are the same address and port.
bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
  }
  return false;
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::transport::Device> device, int rank, int size, const CommOptions& o)
      : Communicator(rank, size),
        device_(std::move(device)),
        ctx_(std::make_shared<Context>(rank, size, o.timeout)),
        timeout_(o.timeout) {}

  ~GlooCommunicator() override {
    try {
      if (connected_) ctx_->closeConnections();
    } catch (...) {
    }
  }

  // Every pair of members gets a TCP connection; addresses travel through
  // `exchange`. The connections are made within the timeout in all (a
  // watchdog fails every pair past it), and end at once when cancelled.
  void connect(const Exchange& exchange) {
    guarded("connect", [&] {
      std::shared_ptr<gloo::transport::Context> tctx = device_->createContext(rank_, size_);
      tctx->setTimeout(timeout_);
      // My blob: the address of my end of each pair, for peers in rank order.
      std::string mine;
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        const std::vector<char> addr = tctx->createPair(peer)->address().bytes();
        mine_[static_cast<size_t>(peer)] = gloo::transport::tcp::Address(addr).getSockaddr();
        const uint32_t n = static_cast<uint32_t>(addr.size());
        mine.append(reinterpret_cast<const char*>(&n), sizeof n);
        mine.append(addr.data(), addr.size());
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        tctx_ = tctx;  // from here on, cancel() reaches the pairs
      }
      if (cancelled()) throw CommError(cancel_reason());
      const std::vector<std::string> all = exchange(mine);
      if (all.size() != static_cast<size_t>(size_)) {
        throw CommError("rendezvous returned " + std::to_string(all.size()) + " blobs for " + std::to_string(size_) +
                        " ranks");
      }
      std::vector<std::vector<char>> peers(static_cast<size_t>(size_));
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        // The peer's blob lists its pairs in rank order, skipping itself.
        const int index = rank_ < peer ? rank_ : rank_ - 1;
        const std::string& blob = all[static_cast<size_t>(peer)];
        size_t at = 0;
        for (int k = 0; k <= index; ++k) {
          uint32_t n = 0;
          if (blob.size() - at < sizeof n) throw CommError("malformed Gloo address from rank " + std::to_string(peer));
          std::memcpy(&n, blob.data() + at, sizeof n);
          at += sizeof n;
          if (blob.size() - at < n) throw CommError("malformed Gloo address from rank " + std::to_string(peer));
          if (k == index) peers[static_cast<size_t>(peer)].assign(blob.data() + at, blob.data() + at + n);
          at += n;
        }
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        for (int peer = 0; peer < size_; ++peer) {
          if (peer != rank_) theirs_[static_cast<size_t>(peer)] = gloo::transport::tcp::Address(peers[static_cast<size_t>(peer)]).getSockaddr();
        }
      }
      // Each pair's connect waits up to the timeout on its own; the
      // watchdog bounds them all together.
      const auto deadline = std::chrono::steady_clock::now() + timeout_;
      bool timed_out = false;
      std::thread watchdog([&] {
        std::unique_lock<std::mutex> lk(mu_);
        if (cv_.wait_until(lk, deadline, [&] { return connect_done_ || cancelled(); })) return;
        timed_out = true;
        close_pairs_locked();
      });
      struct Join {
        GlooCommunicator& c;
        std::thread& t;
        ~Join() {
          {
            std::lock_guard<std::mutex> lk(c.mu_);
            c.connect_done_ = true;
          }
          c.cv_.notify_all();
          t.join();
        }
      };
      auto fail = [&](const std::string& detail) {
        if (timed_out) {
          throw CommError("gloo: connecting a group of " + std::to_string(size_) + ": not connected to every peer within " +
                          std::to_string(timeout_.count()) + " ms (collective_timeout)" + detail);
        }
        if (cancelled()) throw CommError(cancel_reason());
      };
      try {
        Join join{*this, watchdog};
        for (int peer = 0; peer < size_; ++peer) {
          if (peer != rank_) tctx->getPair(peer)->connect(peers[static_cast<size_t>(peer)]);
        }
      } catch (const std::exception& e) {
        fail(std::string(": ") + e.what());
        throw;
      }
      // A pair closed by the watchdog or cancel() ends its connect() as if
      // connected.
      fail("");
      ctx_->set_transport(device_, std::move(tctx));
      {
        std::lock_guard<std::mutex> lk(mu_);
        connected_ = true;
      }
      if (cancelled()) throw CommError(cancel_reason());  // cancelled while the pairs were closing
    });
  }

  const char* backend() const noexcept override { return "gloo"; }

  void all_reduce(const void* in, void* out, size_t count, DataType t, ReduceOp op) override {
    guarded("all_reduce", [&] {
      with_type(t, [&](auto tag) {
        using T = decltype(tag);
        gloo::AllreduceOptions opts(ctx_);
        if (in != out) opts.setInput(const_cast<T*>(static_cast<const T*>(in)), count);
        opts.setOutput(static_cast<T*>(out), count);
        opts.setReduceFunction(reduce_fn<T>(op));
        opts.setTag(next_tag());
        opts.setTimeout(timeout_);
        gloo::allreduce(opts);
        if (op == ReduceOp::kAvg) divide<T>(out, count, size_);
      });
    });
  }

  // Power-of-two groups: recursive halving, log2(n) exchanges with partner
  // rank^d for d = n/2, ..., 1; each keeps the half of its blocks on its
  // side of d, sends the other half and adds what comes back. Other sizes:
  // a ring of n-1 steps. Either way each rank sends n-1 blocks in all, and
  // sending overlaps receiving.
  void reduce_scatter(const void* in, void* out, size_t count, DataType t, ReduceOp op) override {
    guarded("reduce_scatter", [&] {
      with_type(t, [&](auto tag) {
        using T = decltype(tag);
        if (size_ == 1) {
          std::memcpy(out, in, count * sizeof(T));
        } else if ((size_ & (size_ - 1)) == 0) {
          halving_reduce_scatter<T>(static_cast<const T*>(in), static_cast<T*>(out), count, reduce_fn<T>(op));
        } else {
          ring_reduce_scatter<T>(static_cast<const T*>(in), static_cast<T*>(out), count, reduce_fn<T>(op));
        }
        if (op == ReduceOp::kAvg) divide<T>(out, count, size_);
      });
    });
  }

  template <class T>
  void halving_reduce_scatter(const T* in, T* out, size_t count, const gloo::AllreduceOptions::Func& reduce) {
    const uint32_t call = next_tag();
    const size_t half_bytes = static_cast<size_t>(size_ / 2) * count * sizeof(T);
    // Scratch kept across calls: no allocation (nor page faults) per call.
    if (scratch_.size() < 2 * half_bytes) scratch_.resize(2 * half_bytes);
    T* acc = reinterpret_cast<T*>(scratch_.data());  // the running sums of the kept blocks
    T* incoming = reinterpret_cast<T*>(scratch_.data() + half_bytes);
    const T* cur = in;  // blocks [lo, lo + len) of the running sums
    int lo = 0, len = size_;
    uint32_t step = 0;
    for (int d = size_ / 2; d >= 1; d /= 2, ++step) {
      const int half = len / 2;
      const bool upper = (rank_ & d) != 0;
      const T* keep = cur + static_cast<size_t>(upper ? half : 0) * count;
      const T* give = cur + static_cast<size_t>(upper ? 0 : half) * count;
      const size_t n = static_cast<size_t>(half) * count;
      auto send_buf = ctx_->createUnboundBuffer(const_cast<T*>(give), n * sizeof(T));
      auto recv_buf = ctx_->createUnboundBuffer(incoming, n * sizeof(T));
      send_buf->send(rank_ ^ d, slot(kReduceScatterPrefix, call, step));
      recv_buf->recv(rank_ ^ d, slot(kReduceScatterPrefix, call, step));
      recv_buf->waitRecv(timeout_);
      T* dst = d == 1 ? out : acc;  // kept blocks never overlap the half being sent
      reduce(dst, keep, incoming, n);
      send_buf->waitSend(timeout_);
      cur = acc;
      if (upper) lo += half;
      len = half;
    }
  }

  // At step s rank r sends its running sum of block r-s-1 to r+1 and adds
  // what r-1 sends (block r-s-2) to its own input; after n-1 steps block r
  // is complete on rank r.
  template <class T>
  void ring_reduce_scatter(const T* blocks, T* out, size_t count, const gloo::AllreduceOptions::Func& reduce) {
    const size_t bytes = count * sizeof(T);
    const uint32_t call = next_tag();
    const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
    // Two running sums: the one sent at step s was made at step s-1, and is
    // only overwritten at step s+1, after its send completed.
    if (scratch_.size() < 3 * bytes) scratch_.resize(3 * bytes);
    T* partial[2] = {reinterpret_cast<T*>(scratch_.data()), reinterpret_cast<T*>(scratch_.data() + bytes)};
    T* incoming = reinterpret_cast<T*>(scratch_.data() + 2 * bytes);
    auto block = [&](int b) { return blocks + static_cast<size_t>((b % size_ + size_) % size_) * count; };
    auto recv_buf = ctx_->createUnboundBuffer(incoming, bytes);
    for (int s = 0; s < size_ - 1; ++s) {
      const T* send_ptr = s == 0 ? block(rank_ - 1) : partial[(s + 1) % 2];
      auto send_buf = ctx_->createUnboundBuffer(const_cast<T*>(send_ptr), bytes);
      send_buf->send(next, slot(kReduceScatterPrefix, call, static_cast<uint32_t>(s)));
      recv_buf->recv(prev, slot(kReduceScatterPrefix, call, static_cast<uint32_t>(s)));
      recv_buf->waitRecv(timeout_);
      T* dst = s == size_ - 2 ? out : partial[s % 2];
      reduce(dst, block(rank_ - s - 2), incoming, count);
      send_buf->waitSend(timeout_);
    }
  }

  void all_gather(const void* in, void* out, size_t count, DataType t) override {
    guarded("all_gather", [&] {
      const size_t bytes = count * element_size(t);
      gloo::AllgatherOptions opts(ctx_);
      opts.setInput(const_cast<char*>(static_cast<const char*>(in)), bytes);
      opts.setOutput(static_cast<char*>(out), bytes * static_cast<size_t>(size_));
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
  }

  void all_to_all(const void* in, void* out, size_t count, DataType t) override {
    guarded("all_to_all", [&] {
      const size_t bytes = count * element_size(t) * static_cast<size_t>(size_);
      gloo::AlltoallOptions opts(ctx_);
      opts.setInput(const_cast<char*>(static_cast<const char*>(in)), bytes);
      opts.setOutput(static_cast<char*>(out), bytes);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::alltoall(opts);
    });
  }

  void broadcast(const void* in, void* out, size_t count, DataType t, int root) override {
    guarded("broadcast", [&] {
      const size_t bytes = count * element_size(t);
      if (rank_ == root && in != out) std::memcpy(out, in, bytes);
      gloo::BroadcastOptions opts(ctx_);
      opts.setOutput(static_cast<char*>(out), bytes);
      opts.setRoot(root);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  void barrier() override {
    guarded("barrier", [&] {
      gloo::BarrierOptions opts(ctx_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

  class GlooTransfer final : public Transfer {
   public:
    GlooTransfer(GlooCommunicator& comm, std::unique_ptr<gloo::transport::UnboundBuffer> buf, bool send)
        : comm_(comm), buf_(std::move(buf)), send_(send) {}
    void wait() override {
      comm_.guarded(send_ ? "send" : "recv", [&] {
        if (send_) {
          buf_->waitSend(comm_.timeout_);
        } else {
          buf_->waitRecv(comm_.timeout_);
        }
      });
    }

   private:
    GlooCommunicator& comm_;
    std::unique_ptr<gloo::transport::UnboundBuffer> buf_;
    bool send_;
  };

  std::unique_ptr<Transfer> start_send(const void* data, size_t bytes, int peer, uint64_t tag) override {
    std::unique_ptr<Transfer> t;
    guarded("send", [&] {
      auto buf = ctx_->createUnboundBuffer(const_cast<void*>(data), bytes);
      buf->send(peer, slot(kPointToPointPrefix, tag));
      t = std::make_unique<GlooTransfer>(*this, std::move(buf), true);
    });
    return t;
  }

  std::unique_ptr<Transfer> start_recv(void* data, size_t bytes, int peer, uint64_t tag) override {
    std::unique_ptr<Transfer> t;
    guarded("recv", [&] {
      auto buf = ctx_->createUnboundBuffer(data, bytes);
      buf->recv(peer, slot(kPointToPointPrefix, tag));
      t = std::make_unique<GlooTransfer>(*this, std::move(buf), false);
    });
    return t;
  }

  // Gathered on member 0 while the collective runs, then sent back to
  // everyone: 2(n-1) one-way messages in all rather than n(n-1).
  class GlooStatus final : public StatusExchange {
   public:
    GlooStatus(GlooCommunicator& comm, uint8_t mine) : comm_(comm), bytes_(static_cast<size_t>(comm.size_), 0) {
      const int n = comm.size_, me = comm.rank_;
      bytes_[static_cast<size_t>(me)] = mine;
      mine_ = mine;
      slot_ = slot(kStatusPrefix, comm.next_tag());
      comm.guarded("status exchange", [&] {
        if (me == 0) {
          for (int peer = 1; peer < n; ++peer) {
            auto r = comm.ctx_->createUnboundBuffer(&bytes_[static_cast<size_t>(peer)], 1);
            r->recv(peer, slot_);
            pending_.push_back(std::move(r));
          }
        } else {
          send_ = comm.ctx_->createUnboundBuffer(&mine_, 1);
          send_->send(0, slot_);
          all_ = comm.ctx_->createUnboundBuffer(bytes_.data(), bytes_.size());
          all_->recv(0, slot_ + 1);
        }
      });
    }
    std::vector<uint8_t> finish() override {
      comm_.guarded("status exchange", [&] {
        if (comm_.rank_ == 0) {
          for (auto& r : pending_) r->waitRecv(comm_.timeout_);
          pending_.clear();
          all_ = comm_.ctx_->createUnboundBuffer(bytes_.data(), bytes_.size());
          for (int peer = 1; peer < comm_.size_; ++peer) all_->send(peer, slot_ + 1);
          for (int peer = 1; peer < comm_.size_; ++peer) all_->waitSend(comm_.timeout_);
        } else {
          send_->waitSend(comm_.timeout_);
          all_->waitRecv(comm_.timeout_);
        }
      });
      return bytes_;
    }

   private:
    GlooCommunicator& comm_;
    std::vector<uint8_t> bytes_;
    uint8_t mine_ = 0;
    uint64_t slot_ = 0;
    std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> pending_;
    std::unique_ptr<gloo::transport::UnboundBuffer> send_, all_;
  };

  std::unique_ptr<StatusExchange> start_status_exchange(uint8_t mine) override {
    return std::make_unique<GlooStatus>(*this, mine);
  }

 private:
  uint32_t next_tag() { return tag_++; }

  // While connecting, closing a pair ends its wait; once connected, a
  // pair's waits end only when its connection fails: shutting the socket
  // down makes Gloo's own loop see the end of the stream and fail every
  // wait on the pair at once (its peer sees it too).
  void on_cancel() override {
    std::lock_guard<std::mutex> lk(mu_);
    if (connected_) {
      shutdown_sockets_locked();
    } else {
      close_pairs_locked();
    }
    cv_.notify_all();
  }
  void close_pairs_locked() {
    if (!tctx_) return;
    for (int peer = 0; peer < size_; ++peer) {
      if (peer != rank_) tctx_->getPair(peer)->close();
    }
  }
  // The sockets of this communicator's pairs, known by their addresses:
  // the local end of a connection this member accepted is its pair's
  // listening address; the remote end of one it made is the peer's.
  void shutdown_sockets_locked() {
    DIR* dir = ::opendir("/proc/self/fd");
    if (!dir) return;
    while (dirent* e = ::readdir(dir)) {
      const int fd = std::atoi(e->d_name);
      if (fd <= 2 || fd == ::dirfd(dir)) continue;
      sockaddr_storage local{}, remote{};
      socklen_t ll = sizeof local, rl = sizeof remote;
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
      if (local.ss_family != AF_INET && local.ss_family != AF_INET6) continue;
      const bool has_remote = ::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &rl) == 0;
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        if (same_endpoint(local, mine_[static_cast<size_t>(peer)]) ||
            (has_remote && same_endpoint(remote, theirs_[static_cast<size_t>(peer)]))) {
          ::shutdown(fd, SHUT_RDWR);
          break;
        }
      }
    }
    ::closedir(dir);
  }

  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<Context> ctx_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;  // tctx_ and the connect watchdog
  std::condition_variable cv_;
  std::shared_ptr<gloo::transport::Context> tctx_;
  std::vector<sockaddr_storage> mine_ = std::vector<sockaddr_storage>(static_cast<size_t>(size_));  // my pairs' addresses
  std::vector<sockaddr_storage> theirs_ = std::vector<sockaddr_storage>(static_cast<size_t>(size_));  // the peers'
  bool connect_done_ = false;
  bool connected_ = false;
  uint32_t tag_ = 0;
  std::vector<char> scratch_;  // reduce_scatter's running sums and receive buffers
};

}  // namespace

std::shared_ptr<gloo::transport::Device> make_gloo_device(const std::string& hostname) {
  gloo::transport::tcp::attr attr;
  attr.hostname = hostname;
  return gloo::transport::tcp::CreateDevice(attr);
}

std::unique_ptr<Communicator> make_gloo(const std::shared_ptr<gloo::transport::Device>& device, int rank, int size,
                                        const CommOptions& options) {
  return std::make_unique<GlooCommunicator>(device, rank, size, options);
}

void connect_gloo(Communicator& comm, const Exchange& exchange) {
  auto* c = dynamic_cast<GlooCommunicator*>(&comm);
  if (!c) throw CommError(std::string("connect_gloo: not a Gloo communicator but ") + comm.backend());
  c->connect(exchange);
}

}  // namespace cox::collectives
