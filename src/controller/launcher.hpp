// Starting cox-worker processes on this host and describing how they ended.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <sys/types.h>

namespace cox::controller {

struct Spawned {
  pid_t pid = -1;
  int pidfd = -1;      // readable once the process exits; -1 where unsupported
  int stdout_fd = -1;  // read ends of the child's stdout and stderr
  int stderr_fd = -1;
};

// Starts `path` with `args` and this process's environment plus `env`;
// stdin is /dev/null, stdout and stderr are pipes, and no other descriptor
// of ours is inherited. Throws cox::Error saying what failed.
Spawned spawn_process(const std::string& path, const std::vector<std::string>& args,
                      const std::vector<std::pair<std::string, std::string>>& env);

// The cox-worker binary: `configured` if not empty, else $COX_WORKER, next to
// this executable, the build tree, the install tree, then $PATH. Throws
// cox::InvalidArgument listing where it looked.
std::string find_worker_binary(const std::string& configured);

// "exited with code 3", "killed by signal 9 (Killed)".
std::string describe_exit(int wait_status);

}  // namespace cox::controller
