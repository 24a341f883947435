// posix_spawn of worker processes, with pipes for their output and a pidfd
// that tells the I/O thread the moment one exits.
#include "controller/launcher.hpp"

#include "common/check.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

extern char** environ;

namespace cox::controller {
namespace {

void check_sys(bool ok, const char* what) {
  if (!ok) throw Error(fmt::format("{} failed: {}", what, std::strerror(errno)));
}

bool is_executable(const std::string& p) {
  struct stat st {};
  return !p.empty() && ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
}

}  // namespace

Spawned spawn_process(const std::string& path, const std::vector<std::string>& args,
                      const std::vector<std::pair<std::string, std::string>>& env) {
  int out[2], err[2];
  check_sys(::pipe2(out, O_CLOEXEC) == 0, "pipe2");
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    check_sys(false, "pipe2");
  }

  std::vector<std::string> argv_s;
  argv_s.push_back(path);
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  // This process's environment, with `env` replacing or adding entries.
  std::vector<std::string> env_s;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    bool replaced = false;
    for (const auto& [k, v] : env) {
      if (kv.size() > k.size() && kv.substr(0, k.size()) == k && kv[k.size()] == '=') replaced = true;
    }
    if (!replaced) env_s.emplace_back(kv);
  }
  for (const auto& [k, v] : env) env_s.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  // Descriptors of an embedding program that lack O_CLOEXEC stay behind too.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The child starts with default signal dispositions and an empty mask,
  // whatever this process has set.
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, path.c_str(), &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(out[0]);
    ::close(err[0]);
    throw Error(fmt::format("cannot start worker '{}': {}", path, std::strerror(rc)));
  }

  Spawned s;
  s.pid = pid;
  s.stdout_fd = out[0];
  s.stderr_fd = err[0];
#ifdef SYS_pidfd_open
  s.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (s.pidfd >= 0) ::fcntl(s.pidfd, F_SETFD, FD_CLOEXEC);
#endif
  return s;
}

std::string find_worker_binary(const std::string& configured) {
  if (!configured.empty()) {
    COX_CHECK_ARG(is_executable(configured), "worker_path '{}' is not an executable file", configured);
    return configured;
  }
  std::vector<std::string> tried;
  auto try_path = [&](const std::string& p) {
    tried.push_back(p);
    return is_executable(p);
  };
  if (const char* env = std::getenv("COX_WORKER"); env && *env) {
    COX_CHECK_ARG(is_executable(env), "$COX_WORKER '{}' is not an executable file", env);
    return env;
  }
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    self[n] = 0;
    std::string dir(self);
    dir = dir.substr(0, dir.rfind('/'));
    if (try_path(dir + "/cox-worker")) return tried.back();
  }
#ifdef COX_WORKER_BUILD_PATH
  if (try_path(COX_WORKER_BUILD_PATH)) return tried.back();
#endif
#ifdef COX_WORKER_INSTALL_PATH
  if (try_path(COX_WORKER_INSTALL_PATH)) return tried.back();
#endif
  if (const char* path = std::getenv("PATH")) {
    std::string_view rest(path);
    while (!rest.empty()) {
      size_t colon = rest.find(':');
      std::string dir(rest.substr(0, colon));
      if (!dir.empty() && try_path(dir + "/cox-worker")) return tried.back();
      rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
    }
  }
  throw InvalidArgument(fmt::format("cannot find the cox-worker binary; looked at {}; set ControllerOptions::"
                                    "worker_path or $COX_WORKER",
                                    fmt::join(tried, ", ")));
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = ::strsignal(sig);
    return fmt::format("killed by signal {} ({})", sig, name ? name : "unknown");
  }
  return fmt::format("ended with wait status {:#x}", status);
}

}  // namespace cox::controller
