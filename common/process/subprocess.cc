#include "common/process/subprocess.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace diffmesh {

namespace fs = std::filesystem;

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv) {
  if (argv.empty()) return absl::InvalidArgumentError("Spawn: empty argv");
  // Everything the child needs is prepared before fork: only async-signal-safe calls after it.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::ResourceExhaustedError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);  // the parent died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(args[0], args.data());
    const char msg[] = "diffmesh: cannot exec a child process\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(127);
  }
  return pid;
}

std::string FindServiceBinary(const std::string& name, const std::string& bin_dir) {
  const std::string file = "diffmesh-" + name;
  std::vector<fs::path> candidates;
  if (!bin_dir.empty()) candidates.push_back(fs::path(bin_dir) / file);
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec).parent_path();
  candidates.push_back(self / file);                         // installed side by side
  candidates.push_back(self.parent_path() / name / file);    // build tree: services/<name>/
  for (const auto& c : candidates) {
    if (fs::exists(c, ec)) return c.string();
  }
  return "";
}

bool Exited(pid_t pid, int* status) {
  if (pid <= 0) return false;
  return waitpid(pid, status, WNOHANG) == pid;
}

void StopAll(std::vector<pid_t>& pids, absl::Duration grace) {
  for (pid_t p : pids) {
    if (p > 0) kill(p, SIGTERM);
  }
  const absl::Time end = absl::Now() + grace;
  for (pid_t& p : pids) {
    while (p > 0) {
      int status;
      if (waitpid(p, &status, WNOHANG) == p) {
        p = -1;
      } else if (absl::Now() > end) {
        kill(p, SIGKILL);
        waitpid(p, &status, 0);
        p = -1;
      } else {
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  }
}

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "stopped";
}

}  // namespace diffmesh
