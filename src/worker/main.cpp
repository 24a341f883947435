// cox-worker: one per GPU (or CPU "device"). Started by a local controller,
// or by anything else (ssh, srun, mpirun) to attach to a listening one:
//
//   COX_TOKEN=... cox-worker --connect HOST:PORT --rank R
//   COX_TOKEN_FILE=/path/0600-file cox-worker --connect HOST:PORT --rank R
#include "worker/worker.hpp"

#include <cox/errors.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: cox-worker --connect (unix:PATH | HOST:PORT) --rank R [--device cpu|cuda|cuda:N]\n"
               "                  [--connect-timeout-ms MS]\n"
               "The device defaults to $COX_DEVICE, else GPU ($LOCAL_RANK or R) modulo the visible GPUs where\n"
               "libtorch has CUDA, else the CPU.\n"
               "The token (at least 16 bytes) comes from $COX_TOKEN, or from the file named by $COX_TOKEN_FILE\n"
               "(a regular file of this user, mode 0600, not a symbolic link), never from the command line.\n"
               "Over TCP every frame after the handshake is authenticated with keys derived from the token.\n");
}

bool parse_int(const char* s, long long& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtoll(s, &end, 10);
  return errno == 0 && end && *end == 0 && end != s;
}

}  // namespace

int main(int argc, char** argv) {
  cox::worker::WorkerOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "cox-worker: %s needs a value\n", a.c_str());
        usage(stderr);
        std::exit(2);
      }
      return argv[++i];
    };
    long long n = 0;
    if (a == "--connect") {
      o.connect = value();
    } else if (a == "--rank") {
      const char* v = value();
      if (!parse_int(v, n) || n < 0 || n > 1 << 30) {
        std::fprintf(stderr, "cox-worker: --rank '%s' is not a non-negative integer\n", v);
        return 2;
      }
      o.rank = static_cast<int>(n);
    } else if (a == "--device") {
      o.device = value();
    } else if (a == "--connect-timeout-ms") {
      const char* v = value();
      if (!parse_int(v, n) || n <= 0) {
        std::fprintf(stderr, "cox-worker: --connect-timeout-ms '%s' is not a positive integer\n", v);
        return 2;
      }
      o.connect_timeout = std::chrono::milliseconds(n);
    } else if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else {
      std::fprintf(stderr, "cox-worker: unknown argument '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }
  if (o.connect.empty() || o.rank < 0) {
    std::fprintf(stderr, "cox-worker: --connect and --rank are required\n");
    usage(stderr);
    return 2;
  }
  try {
    return cox::worker::run_worker(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cox-worker %d: %s\n", o.rank, e.what());
    return 1;
  }
}
