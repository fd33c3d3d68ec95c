#include "services/cli/mesh.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <iostream>
#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/process/subprocess.h"
#include "diffmesh/client.h"
#include "services/cli/supervisor.h"

namespace diffmesh::cli {
namespace {

struct Child {
  std::string name;     // "ar"
  std::string address;  // 127.0.0.1:port
  int metrics_port = 0;
  std::vector<std::string> argv;
};

// Each service's /metrics port sits 10 above its gRPC port.
constexpr int kMetricsPortOffset = 10;

// A random stage token in a private (0600) temporary file, removed with this object: the
// stages of a local mesh serve only its orchestrator, not whatever else runs on the host.
class ThrowAwayToken {
 public:
  static absl::StatusOr<std::unique_ptr<ThrowAwayToken>> Create() {
    unsigned char bytes[32];
    FILE* random = std::fopen("/dev/urandom", "rb");
    const bool read = random != nullptr && std::fread(bytes, 1, sizeof(bytes), random) == sizeof(bytes);
    if (random != nullptr) std::fclose(random);
    if (!read) return absl::UnavailableError("cannot read /dev/urandom for the stage token");
    std::string token;
    for (unsigned char b : bytes) absl::StrAppend(&token, absl::Hex(b, absl::kZeroPad2));
    std::string path = absl::StrCat(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp",
                                    "/diffmesh-stage-token-XXXXXX");
    const int fd = mkstemp(path.data());  // mode 0600
    if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", path));
    const std::string line = token + "\n";
    const bool written = write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    close(fd);
    auto created = std::unique_ptr<ThrowAwayToken>(new ThrowAwayToken(path));
    if (!written) return absl::UnavailableError(absl::StrCat("cannot write ", path));
    return created;
  }
  ~ThrowAwayToken() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  explicit ThrowAwayToken(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace

int RunMesh(const MeshOptions& o) {
  std::unique_ptr<ThrowAwayToken> throw_away_token;
  std::string stage_token_file = o.security.stage_token_file;
  if (stage_token_file.empty()) {
    auto created = ThrowAwayToken::Create();
    if (!created.ok()) {
      std::cerr << "diffmesh up: " << created.status().message() << "\n";
      return 1;
    }
    throw_away_token = *std::move(created);
    stage_token_file = throw_away_token->path();
  }
  auto addr = [](int port) { return absl::StrCat("127.0.0.1:", port); };
  std::vector<Child> children = {
      {"ar", addr(o.base_port + 1), {}},
      {"encoder", addr(o.base_port + 2), {}},
      {"denoise", addr(o.base_port + 3), {}},
      {"orchestrator", addr(o.base_port), {}},
  };
  for (auto& c : children) {
    if (c.name == "ar" && !o.ar) continue;  // not started: its binary need not exist
    const std::string binary = FindServiceBinary(c.name, o.bin_dir);
    if (binary.empty()) {
      std::cerr << "diffmesh up: cannot find diffmesh-" << c.name << " (build it, or pass --bin-dir)\n";
      return 1;
    }
    const int port = std::stoi(c.address.substr(c.address.rfind(':') + 1));
    c.metrics_port = port + kMetricsPortOffset;
    c.argv = {binary, "--host=127.0.0.1", absl::StrCat("--port=", port),
              absl::StrCat("--metrics_port=", c.metrics_port)};
    if (c.name == "orchestrator") {
      c.argv.push_back("--ar_address=" + children[0].address);
      c.argv.push_back("--encoder_address=" + children[1].address);
      c.argv.push_back("--denoise_address=" + children[2].address);
      if (!o.model_dir.empty()) {
        c.argv.push_back("--model_dir=" + o.model_dir);
      } else {
        if (!o.pipeline_file.empty()) c.argv.push_back("--pipeline=" + o.pipeline_file);
        c.argv.push_back("--models=" + o.model);  // the stages serve this one model only
      }
    } else {
      c.argv.push_back(o.model_dir.empty() ? "--model=" + o.model : "--model_dir=" + o.model_dir);
      c.argv.push_back("--device=" + o.device);  // every stage service takes it
    }
    const MeshSecurity& sec = o.security;
    c.argv.push_back("--stage_token_file=" + stage_token_file);
    if (!sec.tls_cert.empty()) {
      c.argv.push_back("--tls_cert=" + sec.tls_cert);
      c.argv.push_back("--tls_key=" + sec.tls_key);
      if (!sec.tls_client_ca.empty()) c.argv.push_back("--tls_client_ca=" + sec.tls_client_ca);
    }
    if (c.name == "orchestrator") {
      if (!sec.tls_ca.empty()) c.argv.push_back("--stage_tls_ca=" + sec.tls_ca);
      if (!sec.stage_tls_cert.empty()) {
        c.argv.push_back("--stage_tls_cert=" + sec.stage_tls_cert);
        c.argv.push_back("--stage_tls_key=" + sec.stage_tls_key);
      }
      if (!sec.auth_token_file.empty()) {
        c.argv.push_back("--auth_token_file=" + sec.auth_token_file);
      }
    }
    if (c.name == "denoise") {
      // The denoise service starts its other ranks itself (processes, one per rank).
      c.argv.push_back(absl::StrCat("--cfg_degree=", o.parallel.cfg));
      c.argv.push_back(absl::StrCat("--ulysses_degree=", o.parallel.ulysses));
      c.argv.push_back(absl::StrCat("--ring_degree=", o.parallel.ring));
      c.argv.push_back(absl::StrCat("--tp_degree=", o.parallel.tp));
      c.argv.push_back(absl::StrCat("--master_port=", o.base_port + 9));
    }
  }
  if (!o.ar) children.erase(children.begin());  // the orchestrator was told its address only
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);

  // Health checks speak the services' TLS, with the mesh's own client certificate.
  std::vector<sdk::ClientOptions> health(children.size());
  for (size_t i = 0; i < children.size(); ++i) {
    health[i].address = children[i].address;
    if (!o.security.tls_cert.empty()) {
      health[i].tls = sdk::TlsOptions{o.security.tls_ca, o.security.stage_tls_cert,
                                      o.security.stage_tls_key, ""};
    }
  }
  // A fresh channel per attempt, as a service may take minutes to load: a long-lived one would
  // back off its reconnects for longer and longer.
  // The orchestrator is up once its GenerationService serves, i.e. once every stage does.
  auto serving = [&](size_t i) {
    auto client = sdk::Client::Create(health[i]);
    const std::string service =
        children[i].name == "orchestrator" ? "diffmesh.v1.GenerationService" : "";
    return client.ok() && (*client)->WaitUntilServing(absl::Milliseconds(200), service).ok();
  };

  std::vector<SupervisedProcess> processes;
  for (const Child& c : children) processes.push_back({c.name, c.argv});
  SupervisorOptions supervision;
  supervision.log = &std::cerr;
  Supervisor supervisor(std::move(processes), supervision);
  // Until the mesh is first up, a death is a misconfiguration to report, not to retry.
  supervisor.set_restarts(false);
  if (absl::Status s = supervisor.StartAll(); !s.ok()) {
    std::cerr << "diffmesh up: " << s.message() << "\n";
    return 1;
  }
  // Wait for each service to report SERVING; a signal or a dead child aborts the start.
  for (size_t i = 0; i < children.size(); ++i) {
    const Child& c = children[i];
    const absl::Time end = absl::Now() + o.start_timeout;
    while (!serving(i)) {
      if (const auto poll = supervisor.Poll(); !poll.exited.empty()) {
        std::cerr << "diffmesh up: diffmesh-" << children[poll.exited.front()].name
                  << " died while starting; stopping the mesh\n";
        supervisor.StopAll();
        return 1;
      }
      timespec zero = {0, 0};
      const int sig = sigtimedwait(&set, nullptr, &zero);
      if (sig == SIGINT || sig == SIGTERM) {
        supervisor.StopAll();
        return 0;
      }
      if (absl::Now() > end) {
        std::cerr << "diffmesh up: diffmesh-" << c.name << " did not report SERVING within "
                  << absl::FormatDuration(o.start_timeout) << "\n";
        supervisor.StopAll();
        return 1;
      }
    }
  }
  for (size_t i = 0; i < children.size(); ++i) {
    std::printf("%-13s %s (pid %d), metrics http://127.0.0.1:%d/metrics\n",
                children[i].name.c_str(), children[i].address.c_str(),
                static_cast<int>(supervisor.child(i).pid), children[i].metrics_port);
  }
  std::printf("diffmesh mesh is up: generate with --server %s; Ctrl-C stops it\n",
              children.back().address.c_str());
  std::fflush(stdout);

  // From here a dead service is restarted (with backoff) and the others keep serving; a
  // restarted one is reported once it serves again.
  supervisor.set_restarts(true);
  std::set<size_t> recovering;
  supervisor.RunUntilSignal(set, [&](const Supervisor::PollResult& poll) {
    recovering.insert(poll.restarted.begin(), poll.restarted.end());
    for (auto it = recovering.begin(); it != recovering.end();) {
      if (supervisor.child(*it).pid > 0 && serving(*it)) {
        std::cerr << "diffmesh up: diffmesh-" << children[*it].name << " is serving again\n";
        it = recovering.erase(it);
      } else {
        ++it;
      }
    }
  });
  std::printf("diffmesh up: stopped\n");
  std::fflush(stdout);
  return 0;
}

}  // namespace diffmesh::cli
