// The baseline of a benchmark as a plain SPMD program: N processes of the
// benchmark binary itself (re-executed with the arguments a rank needs), no
// controller. They take turns with the Coxswain side: for each block (one
// op and size, one model size...), rank 0 waits for a go from the driver,
// the ranks time the block, rank 0 writes the time, and only then does the
// Coxswain side run its block. Both sides meet the same machine, which on a
// small or shared one matters more than anything measured.
//
// Each rank gets the intra-op threads a Coxswain worker of an N-worker mesh
// gets: $OMP_NUM_THREADS where the user set it, else the cores of this
// process's affinity mask / N, at least 1 (the rule of Controller::Impl::
// spawn_all). The ranks inherit it as OMP_NUM_THREADS and apply it with
// at::set_num_threads (set_rank_threads), whatever the OpenMP runtime makes
// of the variable.
#pragma once

#include <ATen/Parallel.h>

#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

extern char** environ;

namespace cox::bench {

class SpmdGroup {
 public:
  // The intra-op threads of each of `n` ranks (or workers) sharing this
  // process's cores, unless $OMP_NUM_THREADS says otherwise: as the
  // controller computes it for the workers it spawns.
  static int threads_per_rank(int n) {
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    const int cores = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    return std::max(1, cores / std::max(1, n));
  }

  // On a rank: applies its share (OMP_NUM_THREADS, which the group set unless
  // the user had) to libtorch's intra-op pool; returns it.
  static int set_rank_threads() {
    const char* env = std::getenv("OMP_NUM_THREADS");
    const int threads = env ? std::max(1, std::atoi(env)) : 1;
    at::set_num_threads(threads);
    return threads;
  }

  // Starts `n` ranks of `self` with args(rank, scratch_dir) each, with
  // OMP_NUM_THREADS = threads_per_rank(n) unless it is set.
  SpmdGroup(const char* self, int n, const std::function<std::vector<std::string>(int, const std::string&)>& args) {
    char tmpl[] = "/tmp/cox-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    int go[2], result[2];
    if (::pipe(go) != 0 || ::pipe(result) != 0) throw std::runtime_error("pipe failed");
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
    if (!std::getenv("OMP_NUM_THREADS")) env.push_back("OMP_NUM_THREADS=" + std::to_string(threads_per_rank(n)));
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
