// A denoise group heals: two diffmesh-denoise processes (rank 0 serves gRPC, rank 1 is a CFG
// rank or a ring-attention peer; one process each, as the Helm chart runs them). A worker killed
// (SIGKILL) or stopped (SIGSTOP) mid-request fails that request with UNAVAILABLE naming rank 1
// within 10 s, and rank 0 reports NOT_SERVING; once the worker is back (restarted, or SIGCONT)
// the group re-forms, rank 0 reports SERVING and the next request succeeds.
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/tensor/testing/random_tensor.h"
#include "common/tensor/wire_tensor.h"
#include "diffmesh/client.h"
#include "diffmesh/v1/stages.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace diffmesh {
namespace {

using testing::Binary;
using testing::Process;

constexpr char kService[] = "diffmesh.v1.DenoiseService";

v1::DenoiseRequest Request(int steps) {
  std::mt19937 rng(3);
  v1::DenoiseRequest r;
  r.set_model("glm-image-tiny");
  r.set_height(64);
  r.set_width(64);
  r.set_steps(steps);
  r.mutable_guidance()->mutable_main()->set_cfg_scale(1.5f);
  r.mutable_output()->set_format(v1::OUTPUT_FORMAT_LATENTS);
  r.set_seed(5);
  std::vector<int64_t> grid = {1, 2, 3, 4};
  *r.mutable_prior_tokens() = MakeTensor(DType::kInt64, {2, 2}, grid.data(), grid.size() * 8);
  *r.mutable_prompt_embeds() = testing::RandomFloats({1, 4, 64}, rng);
  *r.mutable_negative_prompt_embeds() = testing::RandomFloats({1, 1, 64}, rng);
  return r;
}

struct Outcome {
  grpc::Status status;
  int steps = 0;
  absl::Duration after_signal;  // from `on_first_step` to the end of the call
};

// Runs one Denoise call; once its first progress event arrives, calls `on_first_step` (a
// signal to rank 1) and times the rest of the call.
Outcome Call(v1::DenoiseService::Stub& stub, int steps, absl::Duration deadline,
            const std::function<void()>& on_first_step) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  auto reader = stub.Denoise(&ctx, Request(steps));
  Outcome out;
  absl::Time signalled = absl::Now();
  v1::DenoiseEvent e;
  while (reader->Read(&e)) {
    if (!e.has_progress()) continue;
    if (++out.steps == 1 && on_first_step) {
      on_first_step();
      signalled = absl::Now();
    }
  }
  out.status = reader->Finish();
  out.after_signal = absl::Now() - signalled;
  return out;
}

// grpc.health.v1 status of kService (UNKNOWN when the call fails).
grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& address) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(kService);
  grpc::health::v1::HealthCheckResponse response;
  if (!stub->Check(&ctx, request, &response).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  return response.status();
}

bool WaitForHealth(const std::string& address,
                   grpc::health::v1::HealthCheckResponse::ServingStatus want, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (Health(address) == want) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

class DenoiseGroupHealTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::FreePorts(3);  // gRPC of rank 0, rendezvous, rank 1's health
    ASSERT_GT(base_, 0);
    address_ = absl::StrCat("127.0.0.1:", base_);
    worker_address_ = absl::StrCat("127.0.0.1:", base_ + 2);
    log0_ = absl::StrCat(::testing::TempDir(), "/heal_rank0.log");
    rank0_ = std::make_unique<Process>(Argv(0), log0_);
    StartWorker();
    absl::Status serving = sdk::WaitUntilServing(address_, absl::Seconds(120), kService);
    ASSERT_TRUE(serving.ok()) << serving << Logs();
    stub_ = v1::DenoiseService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }

  // How the two ranks share the work: rank 1 a CFG rank (collectives) by default.
  virtual std::string Layout() const { return "--cfg_degree=2"; }

  std::vector<std::string> Argv(int rank) const {
    return {Binary("denoise"), "--host=127.0.0.1", absl::StrCat("--rank=", rank),
            absl::StrCat("--port=", rank == 0 ? base_ : base_ + 2), Layout(),
            "--launch_ranks=false", absl::StrCat("--master_port=", base_ + 1)};
  }

  void StartWorker() {
    log1_ = absl::StrCat(::testing::TempDir(), "/heal_rank1_", ++workers_, ".log");
    rank1_ = std::make_unique<Process>(Argv(1), log1_);
  }

  std::string Logs() const {
    return absl::StrCat("\n--- rank 0:\n", testing::ReadFile(log0_), "\n--- rank 1:\n",
                        testing::ReadFile(log1_));
  }

  // The request that fails when rank 1 is lost: UNAVAILABLE naming rank 1, well within 10 s.
  void ExpectLost(const Outcome& lost) {
    std::printf("lost request: %s after %s: %s\n",
                lost.status.error_code() == grpc::StatusCode::UNAVAILABLE ? "UNAVAILABLE" : "other",
                absl::FormatDuration(lost.after_signal).c_str(), lost.status.error_message().c_str());
    EXPECT_EQ(lost.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << lost.status.error_message() << Logs();
    EXPECT_NE(lost.status.error_message().find("rank 1"), std::string::npos)
        << lost.status.error_message();
    EXPECT_LT(lost.after_signal, absl::Seconds(10)) << lost.status.error_message();
    EXPECT_EQ(Health(address_), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  }

  // Once rank 1 is back: rank 0 serves again and a whole request succeeds.
  void ExpectHealed() {
    ASSERT_TRUE(WaitForHealth(address_, grpc::health::v1::HealthCheckResponse::SERVING,
                              absl::Seconds(60)))
        << Logs();
    EXPECT_EQ(Health(worker_address_), grpc::health::v1::HealthCheckResponse::SERVING);
    Outcome next = Call(*stub_, 2, absl::Seconds(60), nullptr);
    EXPECT_TRUE(next.status.ok()) << next.status.error_message() << Logs();
    EXPECT_EQ(next.steps, 2);
  }

  int base_ = 0;
  int workers_ = 0;
  std::string address_, worker_address_, log0_, log1_;
  std::unique_ptr<Process> rank0_, rank1_;
  std::unique_ptr<v1::DenoiseService::Stub> stub_;
};

// Steps enough that the request is still running when rank 1 is signalled after the first.
constexpr int kLongSteps = 1000;

// One group through both losses (one start-up for the two, to keep the test short).
TEST_F(DenoiseGroupHealTest, KilledOrStoppedWorkerFailsTheRequestAndTheGroupHealsWhenItIsBack) {
  Outcome ok = Call(*stub_, 2, absl::Seconds(60), nullptr);
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message() << Logs();
  EXPECT_EQ(Health(worker_address_), grpc::health::v1::HealthCheckResponse::SERVING);

  // kill -9 mid-request, then a new process for rank 1.
  Outcome lost = Call(*stub_, kLongSteps, absl::Seconds(120), [&] { kill(rank1_->pid(), SIGKILL); });
  ExpectLost(lost);
  // While rank 1 is away, requests fail at once, UNAVAILABLE.
  Outcome refused = Call(*stub_, 2, absl::Seconds(30), nullptr);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.status.error_message();
  rank1_->Stop(SIGKILL);  // reaps it
  StartWorker();
  ExpectHealed();

  // SIGSTOP mid-request (a hung rank: its connections stay open), then SIGCONT.
  const pid_t worker = rank1_->pid();
  lost = Call(*stub_, kLongSteps, absl::Seconds(120), [&] { kill(worker, SIGSTOP); });
  ExpectLost(lost);
  kill(worker, SIGCONT);
  ExpectHealed();
}

// Ring attention: besides collectives the ranks wait on each other in point-to-point steps
// (send / receive of the next K/V block), which Gloo cannot poll. Where the stop lands decides
// which wait holds rank 0; either must end in seconds, not at the request's deadline (the
// point-to-point case alone: WaitLimitTest.AbortEndsABlockedPointToPointWait).
class DenoiseGroupRingHealTest : public DenoiseGroupHealTest {
 protected:
  std::string Layout() const override { return "--ring_degree=2"; }
};

TEST_F(DenoiseGroupRingHealTest, StoppedRingPeerFailsTheRequestInSecondsAndTheGroupHeals) {
  Outcome ok = Call(*stub_, 2, absl::Seconds(60), nullptr);
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message() << Logs();
  const pid_t worker = rank1_->pid();
  Outcome lost = Call(*stub_, kLongSteps, absl::Seconds(120), [&] { kill(worker, SIGSTOP); });
  ExpectLost(lost);
  kill(worker, SIGCONT);
  ExpectHealed();
}

// The children of `parent` (from /proc, over all its threads: a rank restarted by rank 0's
// supervisor thread is that thread's child), e.g. the ranks a rank 0 started itself.
std::vector<pid_t> Children(pid_t parent) {
  std::vector<pid_t> out;
  const std::string tasks = absl::StrCat("/proc/", parent, "/task");
  for (const auto& task : std::filesystem::directory_iterator(tasks)) {
    std::ifstream in(task.path() / "children");
    pid_t pid;
    while (in >> pid) out.push_back(pid);
  }
  return out;
}

// `diffmesh up` runs one diffmesh-denoise that starts its other ranks itself: it restarts a rank
// that died, and the group re-forms with it.
TEST(DenoiseGroupSupervisorTest, RankZeroRestartsTheRankItStarted) {
  const int base = testing::FreePorts(2);
  ASSERT_GT(base, 0);
  const std::string log = absl::StrCat(::testing::TempDir(), "/heal_launch.log");
  Process rank0({Binary("denoise"), "--host=127.0.0.1", absl::StrCat("--port=", base),
                 "--cfg_degree=2", absl::StrCat("--master_port=", base + 1)},
                log);
  const std::string address = absl::StrCat("127.0.0.1:", base);
  ASSERT_TRUE(sdk::WaitUntilServing(address, absl::Seconds(120), kService).ok()) << testing::ReadFile(log);
  std::vector<pid_t> children = Children(rank0.pid());
  ASSERT_EQ(children.size(), 1u) << testing::ReadFile(log);
  auto stub = v1::DenoiseService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));

  kill(children[0], SIGKILL);
  ASSERT_TRUE(WaitForHealth(address, grpc::health::v1::HealthCheckResponse::NOT_SERVING, absl::Seconds(10)))
      << testing::ReadFile(log);
  ASSERT_TRUE(WaitForHealth(address, grpc::health::v1::HealthCheckResponse::SERVING, absl::Seconds(60)))
      << testing::ReadFile(log);
  std::vector<pid_t> restarted = Children(rank0.pid());
  ASSERT_EQ(restarted.size(), 1u);
  EXPECT_NE(restarted[0], children[0]);
  Outcome next = Call(*stub, 2, absl::Seconds(60), nullptr);
  EXPECT_TRUE(next.status.ok()) << next.status.error_message() << testing::ReadFile(log);

  // Rank 0 killed: its rank notices the store is gone and exits by itself.
  kill(rank0.pid(), SIGKILL);
  rank0.Stop(SIGKILL);
  const absl::Time end = absl::Now() + absl::Seconds(20);
  while (kill(restarted[0], 0) == 0 && absl::Now() < end) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_NE(kill(restarted[0], 0), 0) << "rank 1 outlived rank 0 by 20 s";
}

}  // namespace
}  // namespace diffmesh
