#include "services/cli/supervisor.h"

#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/process/subprocess.h"

namespace diffmesh::cli {

Supervisor::Supervisor(std::vector<SupervisedProcess> processes, SupervisorOptions options)
    : processes_(std::move(processes)), options_(options), state_(processes_.size()) {
  for (State& s : state_) s.next_backoff = options_.initial_backoff;
}

Supervisor::~Supervisor() { StopAll(); }

void Supervisor::Log(const std::string& line) const {
  if (options_.log != nullptr) *options_.log << line << std::endl;
}

absl::Status Supervisor::Start(size_t i, absl::Time now) {
  absl::StatusOr<pid_t> pid = Spawn(processes_[i].argv);
  if (!pid.ok()) return pid.status();
  State& s = state_[i];
  s.child.pid = *pid;
  s.started = now;
  s.restart_at = absl::InfiniteFuture();
  return absl::OkStatus();
}

absl::Status Supervisor::StartAll() {
  const absl::Time now = absl::Now();
  for (size_t i = 0; i < processes_.size(); ++i) {
    if (absl::Status s = Start(i, now); !s.ok()) {
      StopAll();
      return absl::Status(s.code(),
                          absl::StrCat("diffmesh-", processes_[i].name, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

Supervisor::PollResult Supervisor::Poll(absl::Time now) {
  PollResult result;
  for (size_t i = 0; i < state_.size(); ++i) {
    State& s = state_[i];
    int status = 0;
    if (s.child.pid <= 0 || !Exited(s.child.pid, &status)) continue;
    const absl::Duration ran = now - s.started;
    const std::string ran_text = absl::FormatDuration(absl::Trunc(ran, absl::Milliseconds(1)));
    s.child.pid = -1;
    result.exited.push_back(i);
    if (!restarts_) {
      Log(absl::StrCat("diffmesh up: diffmesh-", processes_[i].name, " ", DescribeExit(status),
                       " after ", ran_text));
      continue;
    }
    // A child that ran stably before dying starts over at the shortest delay; one that keeps
    // dying waits twice as long each time, so a broken one does not spin.
    if (ran >= options_.stable_after) s.next_backoff = options_.initial_backoff;
    s.child.last_backoff = s.next_backoff;
    s.restart_at = now + s.next_backoff;
    s.next_backoff = std::min(s.next_backoff * 2, options_.max_backoff);
    Log(absl::StrCat("diffmesh up: diffmesh-", processes_[i].name, " ", DescribeExit(status),
                     " after ", ran_text, "; restarting it in ",
                     absl::FormatDuration(s.child.last_backoff), " (restart ", s.child.restarts + 1,
                     ")"));
  }
  for (size_t i = 0; i < state_.size(); ++i) {
    State& s = state_[i];
    if (s.child.pid > 0 || now < s.restart_at) continue;
    ++s.child.restarts;
    if (absl::Status st = Start(i, now); !st.ok()) {
      // fork failing (memory, process limits) is retried like a child that died at once.
      s.child.last_backoff = s.next_backoff;
      s.restart_at = now + s.next_backoff;
      s.next_backoff = std::min(s.next_backoff * 2, options_.max_backoff);
      Log(absl::StrCat("diffmesh up: cannot restart diffmesh-", processes_[i].name, ": ",
                       st.message(), "; trying again in ",
                       absl::FormatDuration(s.child.last_backoff)));
      continue;
    }
    Log(absl::StrCat("diffmesh up: restarted diffmesh-", processes_[i].name, " (pid ", s.child.pid,
                     ")"));
    result.restarted.push_back(i);
  }
  return result;
}

absl::Duration Supervisor::NextRestartIn(absl::Time now) const {
  absl::Time next = absl::InfiniteFuture();
  for (const State& s : state_) {
    if (s.child.pid <= 0) next = std::min(next, s.restart_at);
  }
  if (next == absl::InfiniteFuture()) return absl::InfiniteDuration();
  return std::max(next - now, absl::ZeroDuration());
}

int Supervisor::RunUntilSignal(const sigset_t& signals,
                               const std::function<void(const PollResult&)>& on_poll) {
  while (true) {
    // Wake for a signal (SIGCHLD: a death), a due restart, or at least every second.
    const absl::Duration wait = std::min(NextRestartIn(), absl::Seconds(1));
    const timespec ts = absl::ToTimespec(wait);
    const int sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig == SIGINT || sig == SIGTERM) {
      StopAll();
      return sig;
    }
    PollResult result = Poll();
    if (on_poll) on_poll(result);
  }
}

void Supervisor::StopAll() {
  std::vector<pid_t> pids;
  for (State& s : state_) {
    pids.push_back(s.child.pid);
    s.restart_at = absl::InfiniteFuture();
  }
  diffmesh::StopAll(pids, options_.stop_grace);
  for (State& s : state_) s.child.pid = -1;
}

}  // namespace diffmesh::cli
