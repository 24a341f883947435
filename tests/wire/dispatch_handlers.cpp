// Compiled twice by dispatch_compile_test.cmake: a handler with an on() for
// every message addressed to the controller compiles; with one missing
// (COX_DROP_ONE), wire::dispatch must not.
#include "wire/messages.hpp"

namespace {

struct Handler {
  template <class M>
  void on(const M&) {}
};

#ifdef COX_DROP_ONE
struct AllButFetchData {
  void on(const cox::wire::Heartbeat&) {}
  void on(const cox::wire::SyncDone&) {}
  void on(const cox::wire::EchoReply&) {}
  void on(const cox::wire::Error&) {}
  void on(const cox::wire::Log&) {}
  void on(const cox::wire::Rendezvous&) {}
  void on(const cox::wire::FetchReply&) {}
  void on(const cox::wire::MetaReply&) {}
  void on(const cox::wire::StatsReply&) {}
  void on(const cox::wire::Done&) {}
  void on(const cox::wire::Failed&) {}
};
#endif

}  // namespace

void handle(const cox::wire::FrameView& f) {
#ifdef COX_DROP_ONE
  cox::wire::dispatch<cox::wire::Dir::kToController>(f, AllButFetchData{});
#else
  cox::wire::dispatch<cox::wire::Dir::kToController>(f, Handler{});
#endif
}
