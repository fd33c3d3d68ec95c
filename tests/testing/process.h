// Child processes and free ports for end-to-end tests.
#ifndef DIFFMESH_TESTS_TESTING_PROCESS_H_
#define DIFFMESH_TESTS_TESTING_PROCESS_H_

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <random>
#include <string>
#include <vector>

namespace diffmesh::testing {

inline std::string BinaryDir() {
  const char* d = std::getenv("DIFFMESH_BINARY_DIR");
  return d != nullptr ? d : ".";
}

inline std::string Binary(const std::string& name) {
  if (name == "diffmesh") return BinaryDir() + "/services/cli/diffmesh";
  return BinaryDir() + "/services/" + name + "/diffmesh-" + name;
}

inline bool PortFree(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// A base port with `count` consecutive free loopback ports.
inline int FreePorts(int count) {
  std::mt19937 rng(std::random_device{}());
  for (int attempt = 0; attempt < 200; ++attempt) {
    int base = 20000 + static_cast<int>(rng() % 30000);
    bool ok = true;
    for (int i = 0; i < count && ok; ++i) ok = PortFree(base + i);
    if (ok) return base;
  }
  return -1;
}

// A child process killed (SIGTERM, then SIGKILL) when this object dies, and when the test
// process dies.
class Process {
 public:
  explicit Process(std::vector<std::string> argv, const std::string& log_path = "") {
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (!log_path.empty()) {
        FILE* f = std::fopen(log_path.c_str(), "w");
        if (f != nullptr) {
          dup2(fileno(f), 1);
          dup2(fileno(f), 2);
        }
      }
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() { Stop(); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool Running() {
    if (pid_ <= 0) return false;
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_status_ = status;
      return false;
    }
    return true;
  }
  // Sends `sig` and waits up to `seconds`; returns the wait status (or -1 on timeout → killed).
  int Stop(int sig = SIGTERM, int seconds = 15) {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, sig);
    for (int i = 0; i < seconds * 100; ++i) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = status;
        return status;
      }
      usleep(10000);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int exit_status_ = 0;
};

// Body and headers of GET `path` on 127.0.0.1:`port` (HTTP/1.0), or "" when it cannot connect.
inline std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) response.append(buf, n);
  close(fd);
  return response;
}

// Whole contents of `path` ("" when it cannot be read).
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs argv to completion; returns the wait status, output in `output` (stdout+stderr).
inline int RunCommand(const std::vector<std::string>& argv, std::string* output) {
  std::string log = "/tmp/diffmesh_cmd_" + std::to_string(getpid()) + "_" + std::to_string(rand()) + ".log";
  int status;
  {
    Process p(argv, log);
    while (p.Running()) usleep(10000);
    status = p.Stop();
  }
  if (output != nullptr) {
    FILE* f = std::fopen(log.c_str(), "r");
    output->clear();
    if (f != nullptr) {
      char buf[4096];
      size_t n;
      while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) output->append(buf, n);
      std::fclose(f);
    }
  }
  std::remove(log.c_str());
  return status;
}

}  // namespace diffmesh::testing

#endif  // DIFFMESH_TESTS_TESTING_PROCESS_H_
