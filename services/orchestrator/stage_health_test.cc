// Health gating: the monitor reports serving only while every stage reports SERVING, and
// follows a stage that stops serving, goes away and comes back.
#include "services/orchestrator/stage_health.h"

#include <atomic>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace diffmesh {
namespace {

TEST(StageHealthTargetsTest, OnePerAddressAndStageApi) {
  auto pipeline = PipelineConfig::Parse(PipelineConfig::DefaultJson());
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  std::vector<StageHealthTarget> targets = StageHealthTargets(*pipeline);
  std::set<std::string> names;
  for (const auto& t : targets) {
    names.insert(t.health_name);
    EXPECT_FALSE(t.address.empty());
  }
  EXPECT_EQ(names, (std::set<std::string>{"diffmesh.v1.ArTokenService",
                                          "diffmesh.v1.EncoderService",
                                          "diffmesh.v1.DenoiseService"}));
  EXPECT_EQ(targets.size(), names.size());  // no duplicates though several models share them
}

// The latest aggregate the monitor reported.
class Recorder {
 public:
  void Set(bool serving, const std::string& why) {
    std::lock_guard<std::mutex> lock(mu_);
    serving_ = serving;
    why_ = why;
    ++reports_;
  }
  // Waits until the last report is `serving`; false after `timeout`.
  bool WaitFor(bool serving, absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (reports_ > 0 && serving_ == serving) return true;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
  std::string why() {
    std::lock_guard<std::mutex> lock(mu_);
    return why_;
  }

 private:
  std::mutex mu_;
  bool serving_ = false;
  std::string why_;
  int reports_ = 0;
};

std::unique_ptr<RunningServer> StartStage(int port, std::vector<std::string> names) {
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = port;
  options.health_service_names = std::move(names);
  auto server = RunningServer::Start({}, options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(StageHealthMonitorTest, ServingOnlyWhileEveryStageServes) {
  auto denoise = StartStage(0, {"diffmesh.v1.DenoiseService"});
  auto ar = StartStage(0, {"diffmesh.v1.ArTokenService"});
  ASSERT_NE(denoise, nullptr);
  ASSERT_NE(ar, nullptr);
  const int denoise_port = denoise->port();
  Recorder recorder;
  ChannelOptions channel;
  channel.initial_reconnect_backoff_ms = 100;
  channel.max_reconnect_backoff_ms = 500;
  StageHealthMonitor monitor(
      {{absl::StrCat("127.0.0.1:", ar->port()), "diffmesh.v1.ArTokenService"},
       {absl::StrCat("127.0.0.1:", denoise_port), "diffmesh.v1.DenoiseService"}},
      channel, absl::Milliseconds(100),
      [&](bool serving, const std::string& why) { recorder.Set(serving, why); });
  ASSERT_TRUE(recorder.WaitFor(true));

  // A stage that reports NOT_SERVING (e.g. shutting down) takes the orchestrator out.
  denoise->server()->GetHealthCheckService()->SetServingStatus("diffmesh.v1.DenoiseService",
                                                               false);
  ASSERT_TRUE(recorder.WaitFor(false));
  EXPECT_NE(recorder.why().find("diffmesh.v1.DenoiseService"), std::string::npos)
      << recorder.why();
  denoise->server()->GetHealthCheckService()->SetServingStatus("diffmesh.v1.DenoiseService",
                                                               true);
  ASSERT_TRUE(recorder.WaitFor(true));

  // A stage that goes away, then comes back on its port.
  denoise->Shutdown(0);
  denoise.reset();
  ASSERT_TRUE(recorder.WaitFor(false));
  denoise = StartStage(denoise_port, {"diffmesh.v1.DenoiseService"});
  ASSERT_NE(denoise, nullptr);
  EXPECT_TRUE(recorder.WaitFor(true));
}

TEST(StageHealthMonitorTest, AStageServingAnotherApiDoesNotCount) {
  // Something listens, but not the stage API the pipeline needs there: NOT_FOUND.
  auto other = StartStage(0, {"diffmesh.v1.EncoderService"});
  ASSERT_NE(other, nullptr);
  Recorder recorder;
  StageHealthMonitor monitor({{absl::StrCat("127.0.0.1:", other->port()),
                               "diffmesh.v1.DenoiseService"}},
                             {}, absl::Milliseconds(100),
                             [&](bool serving, const std::string& why) { recorder.Set(serving, why); });
  ASSERT_TRUE(recorder.WaitFor(false));
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_TRUE(recorder.WaitFor(false, absl::Milliseconds(1)));
}

}  // namespace
}  // namespace diffmesh
