// The load generator against an in-process fake GenerationService whose requests take a fixed
// time: closed loop keeps N in flight, open loop issues on schedule whatever is in flight,
// warm-up is excluded, errors are counted by code, and the report's arithmetic.
#include "loadtest/runner.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include "absl/strings/str_cat.h"
#include "diffmesh/v1/generation.grpc.pb.h"
#include "gtest/gtest.h"

namespace diffmesh::loadtest {
namespace {

// Every request: wait `delay`, then one result with fixed stage timings (or INVALID_ARGUMENT
// for the prompt "bad").
class SlowService final : public v1::GenerationService::CallbackService {
 public:
  explicit SlowService(absl::Duration delay) : delay_(delay) {}

  grpc::ServerWriteReactor<v1::GenerateEvent>* Generate(grpc::CallbackServerContext*,
                                                        const v1::GenerateRequest* request) override {
    requests_.fetch_add(1);
    return new Reactor(delay_, request->prompt() == "bad");
  }

  int requests() const { return requests_.load(); }

 private:
  class Reactor final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
   public:
    Reactor(absl::Duration delay, bool fail) {
      worker_ = std::thread([this, delay, fail] {
        absl::SleepFor(delay);
        if (fail) {
          Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "prompt: bad"));
          return;
        }
        v1::ResultMetadata* m = event_.mutable_result()->mutable_metadata();
        m->set_total_seconds(0.05);
        for (auto [stage, s] : {std::pair{"ar", 0.01}, {"encoder", 0.005}, {"denoise", 0.02},
                                {"vae_decode", 0.01}}) {
          v1::StageTiming* t = m->add_stage_timings();
          t->set_stage(stage);
          t->set_seconds(s);
        }
        StartWrite(&event_);
      });
    }
    void OnWriteDone(bool) override { Finish(grpc::Status::OK); }
    void OnDone() override {
      worker_.join();
      delete this;
    }

   private:
    v1::GenerateEvent event_;
    std::thread worker_;
  };

  absl::Duration delay_;
  std::atomic<int> requests_{0};
};

class RunnerTest : public ::testing::Test {
 protected:
  void Start(absl::Duration delay) {
    service_ = std::make_unique<SlowService>(delay);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_GT(port, 0);
    options_.target = absl::StrCat("127.0.0.1:", port);
    options_.request.set_prompt("ok");
    options_.request_timeout = absl::Seconds(30);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  std::unique_ptr<SlowService> service_;
  std::unique_ptr<grpc::Server> server_;
  LoadOptions options_;
};

TEST_F(RunnerTest, ClosedLoopKeepsConcurrencyInFlight) {
  Start(absl::Milliseconds(50));
  options_.concurrency = 3;
  options_.count = 12;
  auto r = RunLoad(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->issued, 12);
  EXPECT_EQ(r->ok, 12);
  EXPECT_EQ(r->failed, 0);
  EXPECT_EQ(r->max_in_flight, 3);
  EXPECT_GE(r->latency.min, 0.05);
  // 12 requests, 3 at a time, 50 ms each: about 4 rounds.
  EXPECT_GE(r->wall_seconds, 0.2);
  EXPECT_LT(r->wall_seconds, 2.0);
  EXPECT_NEAR(r->throughput_rps, 12 / r->wall_seconds, 1e-9);
}

TEST_F(RunnerTest, OpenLoopArrivalsDoNotWaitForCompletions) {
  Start(absl::Milliseconds(400));
  options_.rate = 100;  // mean gap 10 ms, far shorter than a request
  options_.count = 20;
  auto r = RunLoad(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ok, 20);
  // Issuing 20 arrivals takes ~0.2 s, not 20 × 0.4 s: most are in flight together.
  EXPECT_LT(r->issue_seconds, 1.5);
  EXPECT_GE(r->max_in_flight, 8);
  EXPECT_GT(r->offered_rps, 20);
  EXPECT_GE(r->latency.min, 0.4);
}

TEST_F(RunnerTest, WarmupIsRunButNotReported) {
  Start(absl::Milliseconds(5));
  options_.concurrency = 2;
  options_.warmup = 5;
  options_.count = 4;
  auto r = RunLoad(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->warmup_completed, 5);
  EXPECT_EQ(r->issued, 4);
  EXPECT_EQ(r->latency.count, 4);
  EXPECT_EQ(service_->requests(), 9);
}

TEST_F(RunnerTest, DurationBoundsTheRun) {
  Start(absl::Milliseconds(50));
  options_.concurrency = 1;
  options_.duration = absl::Milliseconds(500);
  auto r = RunLoad(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(r->issued, 3);
  EXPECT_LE(r->issued, 11);
  EXPECT_EQ(r->failed, 0);
}

TEST_F(RunnerTest, ErrorsAreCountedByCode) {
  Start(absl::Milliseconds(1));
  options_.request.set_prompt("bad");
  options_.concurrency = 2;
  options_.count = 6;
  auto r = RunLoad(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ok, 0);
  EXPECT_EQ(r->failed, 6);
  ASSERT_EQ(r->errors_by_code.size(), 1u);
  EXPECT_EQ(r->errors_by_code.at("INVALID_ARGUMENT"), 6);
  EXPECT_EQ(r->first_error.at("INVALID_ARGUMENT"), "prompt: bad");
  EXPECT_EQ(r->latency.count, 0);
}

TEST_F(RunnerTest, UnreachableTargetIsUnavailable) {
  Start(absl::Milliseconds(1));
  server_->Shutdown();
  server_.reset();
  options_.count = 2;
  auto r = RunLoad(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->failed, 2);
  EXPECT_EQ(r->errors_by_code.count("UNAVAILABLE"), 1u);
}

TEST(ReportTest, OrchestratorShareTakesTheStagesCriticalPath) {
  // The encoder runs beside the AR stage: only the longer of the two counts.
  EXPECT_DOUBLE_EQ(OrchestratorSeconds(1.0, {{"ar", 0.3}, {"encoder", 0.5}, {"denoise", 0.2},
                                             {"vae_decode", 0.1}}),
                   0.2);
  EXPECT_DOUBLE_EQ(OrchestratorSeconds(0.5, {{"denoise", 0.4}}), 0.1);
}

TEST(ReportTest, JsonCarriesCountsAndOrderedPercentiles) {
  LoadOptions o;
  o.request.set_prompt("p");
  o.request.set_steps(2);
  std::vector<RequestRecord> records;
  for (int i = 1; i <= 10; ++i) {
    RequestRecord r;
    r.latency_seconds = 0.1 * i;
    r.server_total_seconds = 0.09 * i;
    r.stage_seconds = {{"ar", 0.01 * i}, {"denoise", 0.02 * i}};
    records.push_back(r);
  }
  RequestRecord failed;
  failed.code = absl::StatusCode::kUnavailable;
  failed.message = "down";
  records.push_back(failed);
  const Report report = BuildReport(o, records);
  const nlohmann::ordered_json j = ReportToJson(report);
  EXPECT_EQ(j["mode"], "closed");
  EXPECT_EQ(j["count"], 11);
  EXPECT_EQ(j["ok"], 10);
  EXPECT_EQ(j["errors"], 1);
  EXPECT_EQ(j["errors_by_code"]["UNAVAILABLE"], 1);
  EXPECT_EQ(j["request"]["steps"], 2);
  EXPECT_TRUE(j["request"]["seed"].is_null());
  const auto& e2e = j["latency_seconds"]["end_to_end"];
  EXPECT_EQ(e2e["count"], 10);
  EXPECT_LE(e2e["p50"].get<double>(), e2e["p90"].get<double>());
  EXPECT_LE(e2e["p90"].get<double>(), e2e["p99"].get<double>());
  EXPECT_NEAR(e2e["p50"].get<double>(), 0.55, 1e-12);
  EXPECT_EQ(j["latency_seconds"]["stages"]["denoise"]["count"], 10);
  EXPECT_NEAR(j["latency_seconds"]["orchestrator"]["max"].get<double>(), 0.9 - 0.1 - 0.2, 1e-12);
  const std::string table = ReportToTable(report);
  EXPECT_NE(table.find("UNAVAILABLE"), std::string::npos);
  EXPECT_NE(table.find("orchestrator"), std::string::npos);
}

TEST(OptionsTest, RunMustBeBounded) {
  LoadOptions o;
  o.request.set_prompt("p");
  EXPECT_EQ(ValidateOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o.count = 1;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.concurrency = 0;
  EXPECT_FALSE(ValidateOptions(o).ok());
  o.rate = 5;  // open loop ignores --concurrency
  EXPECT_TRUE(ValidateOptions(o).ok());
}

}  // namespace
}  // namespace diffmesh::loadtest
