#include "services/cli/mesh.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "diffmesh/client.h"

namespace diffmesh::cli {
namespace {

namespace fs = std::filesystem;

struct Child {
  std::string name;     // "ar"
  std::string binary;   // path
  std::string address;  // 127.0.0.1:port
  std::vector<std::string> args;
  pid_t pid = -1;
};

std::string FindBinary(const std::string& bin_dir, const std::string& name) {
  const std::string file = "diffmesh-" + name;
  std::vector<fs::path> candidates;
  if (!bin_dir.empty()) candidates.push_back(fs::path(bin_dir) / file);
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec).parent_path();
  candidates.push_back(self / file);                    // installed side by side
  candidates.push_back(self.parent_path() / name / file);  // the build tree: services/<name>/
  for (const auto& c : candidates) {
    if (fs::exists(c, ec)) return c.string();
  }
  return "";
}

pid_t Spawn(const Child& c) {
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0) return pid;
  // Child: die with the supervisor (no orphans even if it is killed), default signals.
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(1);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(c.binary.c_str()));
  for (const auto& a : c.args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv(c.binary.c_str(), argv.data());
  std::fprintf(stderr, "diffmesh up: cannot run %s: %s\n", c.binary.c_str(), std::strerror(errno));
  _exit(127);
}

// Reaps exited children; returns the name of one that exited, or "".
std::string ReapExited(std::vector<Child>& children, int* status_out) {
  for (auto& c : children) {
    if (c.pid <= 0) continue;
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      *status_out = status;
      return c.name;
    }
  }
  return "";
}

void StopAll(std::vector<Child>& children) {
  for (auto& c : children) {
    if (c.pid > 0) kill(c.pid, SIGTERM);
  }
  const absl::Time end = absl::Now() + absl::Seconds(10);
  for (auto& c : children) {
    while (c.pid > 0) {
      int status;
      if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.pid = -1;
      } else if (absl::Now() > end) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &status, 0);
        c.pid = -1;
      } else {
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  }
}

std::string Describe(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "stopped";
}

}  // namespace

int RunMesh(const MeshOptions& o) {
  auto addr = [](int port) { return absl::StrCat("127.0.0.1:", port); };
  std::vector<Child> children = {
      {"ar", "", addr(o.base_port + 1), {}},
      {"encoder", "", addr(o.base_port + 2), {}},
      {"denoise", "", addr(o.base_port + 3), {}},
      {"orchestrator", "", addr(o.base_port), {}},
  };
  for (auto& c : children) {
    c.binary = FindBinary(o.bin_dir, c.name);
    if (c.binary.empty()) {
      std::cerr << "diffmesh up: cannot find diffmesh-" << c.name
                << " (build it, or pass --bin-dir)\n";
      return 1;
    }
    c.args = {"--host=127.0.0.1", absl::StrCat("--port=", c.address.substr(c.address.rfind(':') + 1))};
    if (c.name == "orchestrator") {
      c.args.push_back("--ar_address=" + children[0].address);
      c.args.push_back("--encoder_address=" + children[1].address);
      c.args.push_back("--denoise_address=" + children[2].address);
    } else {
      c.args.push_back("--model=" + o.model);
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);

  for (auto& c : children) c.pid = Spawn(c);
  // Wait for each service to report SERVING; a signal or a dead child aborts the start.
  for (auto& c : children) {
    const absl::Time end = absl::Now() + o.start_timeout;
    while (true) {
      if (sdk::WaitUntilServing(c.address, absl::Milliseconds(200)).ok()) break;
      int status = 0;
      std::string dead = ReapExited(children, &status);
      if (!dead.empty()) {
        std::cerr << "diffmesh up: diffmesh-" << dead << " " << Describe(status) << " while starting\n";
        StopAll(children);
        return 1;
      }
      timespec zero = {0, 0};
      int sig = sigtimedwait(&set, nullptr, &zero);
      if (sig == SIGINT || sig == SIGTERM) {
        StopAll(children);
        return 0;
      }
      if (absl::Now() > end) {
        std::cerr << "diffmesh up: diffmesh-" << c.name << " did not report SERVING within "
                  << absl::FormatDuration(o.start_timeout) << "\n";
        StopAll(children);
        return 1;
      }
    }
  }
  for (const auto& c : children) {
    std::printf("%-13s %s (pid %d)\n", c.name.c_str(), c.address.c_str(), static_cast<int>(c.pid));
  }
  std::printf("diffmesh mesh is up: generate with --server %s; Ctrl-C stops it\n",
              children.back().address.c_str());
  std::fflush(stdout);

  while (true) {
    timespec tick = {1, 0};
    int sig = sigtimedwait(&set, nullptr, &tick);
    if (sig == SIGINT || sig == SIGTERM) {
      std::printf("diffmesh up: stopping\n");
      std::fflush(stdout);
      StopAll(children);
      return 0;
    }
    int status = 0;
    std::string dead = ReapExited(children, &status);
    if (!dead.empty()) {
      std::cerr << "diffmesh up: diffmesh-" << dead << " " << Describe(status) << "; stopping the mesh\n";
      StopAll(children);
      return 1;
    }
  }
}

}  // namespace diffmesh::cli
