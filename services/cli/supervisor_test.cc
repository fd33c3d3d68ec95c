#include "services/cli/supervisor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/process/subprocess.h"
#include "gtest/gtest.h"

namespace diffmesh::cli {
namespace {

// The serving child built beside this test.
std::string ChildBinary() {
  std::error_code ec;
  return (std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() /
          "supervisor_test_serving_child")
      .string();
}

// The reply of the child listening on `port`, or "" if none answers.
std::string Ask(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string reply;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    char buffer[64];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof(buffer))) > 0) reply.append(buffer, n);
  }
  close(fd);
  return reply;
}

// Asks until `port` answers (up to `timeout`).
std::string AskUntilServing(int port, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + timeout;
  std::string reply;
  while ((reply = Ask(port)).empty() && absl::Now() < end) absl::SleepFor(absl::Milliseconds(20));
  return reply;
}

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

// Polls `s` until `done` holds or `timeout` passes.
template <typename F>
bool PollUntil(Supervisor& s, F done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    s.Poll();
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return false;
}

TEST(SupervisorTest, KilledChildIsRestartedAndServesAgainWhileTheOtherKeepsRunning) {
  const int port_a = FreeLoopbackPort(), port_b = FreeLoopbackPort();
  ASSERT_GT(port_a, 0);
  std::ostringstream log;
  SupervisorOptions options;
  options.initial_backoff = absl::Milliseconds(100);
  options.log = &log;
  Supervisor s({{"alpha", {ChildBinary(), std::to_string(port_a)}},
                {"beta", {ChildBinary(), std::to_string(port_b)}}},
               options);
  ASSERT_TRUE(s.StartAll().ok());
  const pid_t a = s.child(0).pid, b = s.child(1).pid;
  ASSERT_EQ(AskUntilServing(port_a), absl::StrCat("ok ", a, "\n"));
  ASSERT_EQ(AskUntilServing(port_b), absl::StrCat("ok ", b, "\n"));

  ASSERT_EQ(kill(a, SIGKILL), 0);
  ASSERT_TRUE(PollUntil(s, [&] { return s.child(0).pid > 0 && s.child(0).pid != a; })) << log.str();
  const pid_t a2 = s.child(0).pid;
  EXPECT_EQ(s.child(0).restarts, 1);
  EXPECT_EQ(s.child(0).last_backoff, absl::Milliseconds(100));
  EXPECT_EQ(AskUntilServing(port_a), absl::StrCat("ok ", a2, "\n"));
  // The other child was left alone.
  EXPECT_EQ(s.child(1).pid, b);
  EXPECT_EQ(s.child(1).restarts, 0);
  EXPECT_EQ(Ask(port_b), absl::StrCat("ok ", b, "\n"));
  EXPECT_NE(log.str().find("diffmesh-alpha was killed by signal 9"), std::string::npos)
      << log.str();
  EXPECT_NE(log.str().find("restarted diffmesh-alpha"), std::string::npos) << log.str();

  s.StopAll();
  EXPECT_FALSE(Alive(a2));
  EXPECT_FALSE(Alive(b));
  EXPECT_EQ(Ask(port_a), "");
}

TEST(SupervisorTest, BackoffDoublesUpToTheLimitForAChildThatKeepsDying) {
  std::ostringstream log;
  SupervisorOptions options;
  options.initial_backoff = absl::Milliseconds(20);
  options.max_backoff = absl::Milliseconds(80);
  options.stable_after = absl::Seconds(60);
  options.log = &log;
  Supervisor s({{"crashy", {"/bin/sh", "-c", "exit 3"}}}, options);
  ASSERT_TRUE(s.StartAll().ok());
  std::vector<absl::Duration> delays;
  std::vector<absl::Time> deaths;
  const absl::Time end = absl::Now() + absl::Seconds(20);
  while (delays.size() < 5 && absl::Now() < end) {
    const absl::Time now = absl::Now();
    const Supervisor::PollResult r = s.Poll(now);
    if (!r.exited.empty()) {
      delays.push_back(s.child(0).last_backoff);
      deaths.push_back(now);
      // Not restarted before its delay.
      EXPECT_GE(s.NextRestartIn(now), s.child(0).last_backoff - absl::Milliseconds(1));
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(delays.size(), 5u) << log.str();
  EXPECT_EQ(delays, (std::vector<absl::Duration>{absl::Milliseconds(20), absl::Milliseconds(40),
                                                 absl::Milliseconds(80), absl::Milliseconds(80),
                                                 absl::Milliseconds(80)}));
  for (size_t i = 1; i < deaths.size(); ++i) EXPECT_GE(deaths[i] - deaths[i - 1], delays[i - 1]);
  EXPECT_NE(log.str().find("diffmesh-crashy exited with code 3"), std::string::npos) << log.str();
}

TEST(SupervisorTest, BackoffStartsOverAfterAStableRun) {
  SupervisorOptions options;
  options.initial_backoff = absl::Milliseconds(10);
  options.stable_after = absl::Milliseconds(150);
  Supervisor s({{"steady", {"/bin/sh", "-c", "sleep 0.3; exit 1"}}}, options);
  ASSERT_TRUE(s.StartAll().ok());
  for (int restart = 1; restart <= 3; ++restart) {
    ASSERT_TRUE(PollUntil(s, [&] { return s.child(0).restarts == restart && s.child(0).pid > 0; }));
    EXPECT_EQ(s.child(0).last_backoff, absl::Milliseconds(10)) << "restart " << restart;
  }
}

// A binary that cannot be executed exits 127 at once and is retried with backoff, not spun.
TEST(SupervisorTest, MissingBinaryIsRetriedWithBackoff) {
  SupervisorOptions options;
  options.initial_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(40);
  Supervisor s({{"ghost", {"/nonexistent/diffmesh-ghost"}}}, options);
  ASSERT_TRUE(s.StartAll().ok());
  ASSERT_TRUE(PollUntil(s, [&] { return s.child(0).restarts >= 4; }));
  EXPECT_EQ(s.child(0).last_backoff, absl::Milliseconds(40));
}

// The loop `diffmesh up` runs: a dead child is restarted and serves again, SIGTERM stops all.
TEST(SupervisorTest, RunUntilSignalRestartsThenStopsEverythingOnSigterm) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGCHLD);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &signals, nullptr), 0);

  const int port = FreeLoopbackPort();
  SupervisorOptions options;
  options.initial_backoff = absl::Milliseconds(50);
  std::mutex mu;
  std::vector<pid_t> seen;  // every pid of the child, in order
  std::atomic<int> stop_signal{0};
  std::thread runner([&] {
    Supervisor s({{"alpha", {ChildBinary(), std::to_string(port)}},
                  {"beta", {"/bin/sh", "-c", "exec sleep 600"}}},
                 options);
    ASSERT_TRUE(s.StartAll().ok());
    {
      std::lock_guard<std::mutex> lock(mu);
      seen = {s.child(0).pid, s.child(1).pid};
    }
    stop_signal = s.RunUntilSignal(signals, [&](const Supervisor::PollResult& r) {
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i : r.restarted) seen.push_back(s.child(i).pid);
    });
  });
  auto pids = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return seen;
  };
  const absl::Time end = absl::Now() + absl::Seconds(10);
  while (pids().size() < 2 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(pids().size(), 2u);
  const pid_t first = pids()[0], other = pids()[1];
  ASSERT_FALSE(AskUntilServing(port).empty());
  ASSERT_EQ(kill(first, SIGKILL), 0);
  while (pids().size() < 3 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_EQ(pids().size(), 3u);
  const pid_t second = pids()[2];
  EXPECT_EQ(AskUntilServing(port), absl::StrCat("ok ", second, "\n"));
  EXPECT_TRUE(Alive(other));

  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  runner.join();
  EXPECT_EQ(stop_signal.load(), SIGTERM);
  EXPECT_FALSE(Alive(second));
  EXPECT_FALSE(Alive(other));
  EXPECT_EQ(Ask(port), "");
}

}  // namespace
}  // namespace diffmesh::cli
