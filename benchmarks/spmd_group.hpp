// The baseline of a benchmark as a plain SPMD program: N processes of the
// benchmark binary itself (re-executed with the arguments a rank needs), no
// controller. They take turns with the Coxswain side: for each block (one
// op and size, one model size...), rank 0 waits for a go from the driver,
// the ranks time the block, rank 0 writes the time, and only then does the
// Coxswain side run its block. Both sides meet the same machine, which on a
// small or shared one matters more than anything measured.
#pragma once

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace cox::bench {

class SpmdGroup {
 public:
  // Starts `n` ranks of `self` with args(rank, scratch_dir) each. Ranks get
  // OMP_NUM_THREADS = cores / n unless it is set, as Coxswain's workers do.
  SpmdGroup(const char* self, int n, const std::function<std::vector<std::string>(int, const std::string&)>& args) {
    char tmpl[] = "/tmp/cox-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    int go[2], result[2];
    if (::pipe(go) != 0 || ::pipe(result) != 0) throw std::runtime_error("pipe failed");
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
    if (!std::getenv("OMP_NUM_THREADS")) {
      const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
      env.push_back("OMP_NUM_THREADS=" + std::to_string(std::max(1u, cores / static_cast<unsigned>(n))));
    }
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    for (int r = 0; r < n; ++r) {
      std::vector<std::string> a{self};
      for (auto& x : args(r, dir_)) a.push_back(x);
      std::vector<char*> argv;
      for (auto& x : a) argv.push_back(x.data());
      argv.push_back(nullptr);
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      if (r == 0) {
        posix_spawn_file_actions_adddup2(&fa, go[0], 0);
        posix_spawn_file_actions_adddup2(&fa, result[1], 1);
      }
      for (int fd : {go[0], go[1], result[0], result[1]}) posix_spawn_file_actions_addclose(&fa, fd);
      pid_t pid;
      const int rc = ::posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), envp.data());
      posix_spawn_file_actions_destroy(&fa);
      if (rc != 0) throw std::runtime_error("cannot start an SPMD rank");
      pids_.push_back(pid);
    }
    ::close(go[0]);
    ::close(result[1]);
    go_ = go[1];
    results_ = ::fdopen(result[0], "r");
  }
  ~SpmdGroup() {
    ::close(go_);  // EOF: rank 0 stops, and with it the others
    for (pid_t pid : pids_) {
      int status = 0;
      ::waitpid(pid, &status, 0);
    }
    std::fclose(results_);
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
  SpmdGroup(const SpmdGroup&) = delete;
  SpmdGroup& operator=(const SpmdGroup&) = delete;

  // Lets the ranks run their next block; returns what rank 0 reported.
  double run_block() {
    const char go = 'g';
    double t = 0;
    if (::write(go_, &go, 1) != 1 || std::fscanf(results_, "%lf", &t) != 1) {
      throw std::runtime_error("an SPMD rank failed");
    }
    return t;
  }

  // On rank 0: waits for the driver's go; false when the driver is done.
  static bool wait_turn() {
    char go;
    return ::read(0, &go, 1) == 1;
  }
  // On rank 0: the block's figure, for the driver.
  static void report(double value) {
    std::printf("%.9g\n", value);
    std::fflush(stdout);
  }

 private:
  std::string dir_;
  std::vector<pid_t> pids_;
  int go_ = -1;
  std::FILE* results_ = nullptr;
};

}  // namespace cox::bench
