// Keeps child processes running: a child that dies is logged and restarted after an exponential
// backoff, while the others keep running; everything stops on SIGINT / SIGTERM. Used by
// `diffmesh up` (mesh.cc), free of gRPC and LibTorch so that it is tested with tiny children.
#ifndef DIFFMESH_SERVICES_CLI_SUPERVISOR_H_
#define DIFFMESH_SERVICES_CLI_SUPERVISOR_H_

#include <signal.h>
#include <sys/types.h>

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace diffmesh::cli {

struct SupervisedProcess {
  std::string name;               // in logs: "diffmesh-<name>"
  std::vector<std::string> argv;  // argv[0] is the binary's path
};

struct SupervisorOptions {
  // Delay before the first restart of a child; doubled after each restart that follows an
  // unstable run, up to max_backoff.
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(10);
  // A child that ran at least this long before dying was stable: its backoff starts over.
  absl::Duration stable_after = absl::Seconds(30);
  // SIGTERM, then SIGKILL after this long, when stopping.
  absl::Duration stop_grace = absl::Seconds(10);
  // Where exits and restarts are logged (one line each); not owned.
  std::ostream* log = nullptr;
};

// Not thread-safe: one thread starts, polls, runs and stops it. Spawn sets PR_SET_PDEATHSIG, which
// fires when the spawning *thread* ends, so that thread should live as long as the children.
class Supervisor {
 public:
  struct Child {
    pid_t pid = -1;               // -1 while waiting to be restarted (or stopped)
    int restarts = 0;             // how many times it was started again
    absl::Duration last_backoff;  // the delay before its latest restart
  };

  Supervisor(std::vector<SupervisedProcess> processes, SupervisorOptions options);
  // Stops every child still running.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts every child; on an error, stops those already started.
  absl::Status StartAll();

  struct PollResult {
    std::vector<size_t> exited;     // children that died since the last poll (restart scheduled)
    std::vector<size_t> restarted;  // children started again in this poll
  };
  // Reaps children that exited (logging how and scheduling their restart) and starts those whose
  // backoff has passed by `now`.
  PollResult Poll(absl::Time now = absl::Now());

  // How long until the next scheduled restart from `now` (zero if overdue; infinite if none).
  absl::Duration NextRestartIn(absl::Time now = absl::Now()) const;

  // Waits for `signals` (which the calling thread must have blocked, with SIGCHLD among them so
  // a death wakes it at once), polling, until SIGINT or SIGTERM arrives; then stops every child
  // and returns that signal. `on_poll` (optional) sees each poll's result.
  int RunUntilSignal(const sigset_t& signals,
                     const std::function<void(const PollResult&)>& on_poll = nullptr);

  // SIGTERM to every child, SIGKILL after stop_grace; reaps all; cancels pending restarts.
  void StopAll();

  // While off (it is on from construction), Poll reports and logs deaths but schedules no
  // restart: `diffmesh up` fails fast when a service dies before the mesh first came up.
  void set_restarts(bool on) { restarts_ = on; }

  size_t size() const { return processes_.size(); }
  const std::string& name(size_t i) const { return processes_[i].name; }
  const Child& child(size_t i) const { return state_[i].child; }

 private:
  struct State {
    Child child;
    absl::Time started;                              // of the current (or last) run
    absl::Time restart_at = absl::InfiniteFuture();  // when a dead child is due
    absl::Duration next_backoff;                     // the delay of its next restart
  };
  absl::Status Start(size_t i, absl::Time now);
  void Log(const std::string& line) const;

  std::vector<SupervisedProcess> processes_;
  SupervisorOptions options_;
  std::vector<State> state_;
  bool restarts_ = true;
};

}  // namespace diffmesh::cli

#endif  // DIFFMESH_SERVICES_CLI_SUPERVISOR_H_
