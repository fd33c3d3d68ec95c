#include "services/orchestrator/prometheus_observer.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/metrics/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/orchestrator/orchestrator_core.h"
#include "services/orchestrator/testing/fake_stages.h"

namespace diffmesh {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class PrometheusObserverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pipeline = PipelineConfig::Parse(PipelineConfig::DefaultJson());
    ASSERT_TRUE(pipeline.ok());
    model_ = pipeline->default_model;
    observer_ =
        std::make_unique<PrometheusRequestObserver>(registry_, std::vector<std::string>{model_});
    auto core = OrchestratorCore::Create({*pipeline, &stages_, observer_.get()});
    ASSERT_TRUE(core.ok());
    core_ = std::move(*core);
  }

  absl::Status Run(const v1::GenerateRequest& r) {
    CallContext ctx;
    return core_->Generate(ctx, r, [](const v1::GenerateEvent&) {});
  }

  static v1::GenerateRequest Request() {
    v1::GenerateRequest r;
    r.set_prompt("a red fox");
    r.set_seed(1234);
    r.set_steps(3);
    return r;
  }

  std::string Text() { return metrics::TextExposition({&registry_}); }
  std::string M() { return absl::StrCat("model=\"", model_, "\""); }

  prometheus::Registry registry_;
  std::string model_;
  testing::FakeStages stages_;
  std::unique_ptr<PrometheusRequestObserver> observer_;
  std::unique_ptr<OrchestratorCore> core_;
};

TEST_F(PrometheusObserverTest, ModelSeriesStartAtZero) {
  const std::string text = Text();
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_requests_total{code=\"OK\",", M(), "} 0")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_requests_in_flight{", M(), "} 0")));
  EXPECT_THAT(text, HasSubstr("diffmesh_requests_waiting{stage=\"orchestrator\"} 0"));
}

TEST_F(PrometheusObserverTest, SuccessfulRequestRecordsEveryFamily) {
  ASSERT_TRUE(Run(Request()).ok());
  const std::string text = Text();
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_requests_total{code=\"OK\",", M(), "} 1")));
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("diffmesh_request_duration_seconds_count{", M(), "} 1")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_queue_duration_seconds_count{", M(), "} 1")));
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("diffmesh_time_to_first_event_seconds_count{", M(), "} 1")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_requests_in_flight{", M(), "} 0")));
  EXPECT_THAT(text, HasSubstr("diffmesh_requests_waiting{stage=\"orchestrator\"} 0"));
  for (const char* stage : {"ar", "encoder", "denoise", "vae_decode", "transfer"}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_count{", M(),
                                             ",stage=\"", stage, "\"} 1")))
        << stage;
  }
  // The fake denoise stage reports 0.5 s + 0.25 s of compute; both land in their buckets.
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_sum{", M(),
                                           ",stage=\"denoise\"} 0.5")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_bucket{", M(),
                                           ",stage=\"vae_decode\",le=\"0.25\"} 1")));
  for (const char* stage : {"ar", "encoder", "denoise"}) {
    for (const char* direction : {"sent", "received"}) {
      EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_bytes_total{direction=\"", direction,
                                               "\",stage=\"", stage, "\"}")))
          << stage << " " << direction;
    }
  }
}

TEST_F(PrometheusObserverTest, FailuresAreCountedByCodeWithBoundedModelLabels) {
  v1::GenerateRequest bad_steps = Request();
  bad_steps.set_steps(100000);
  EXPECT_EQ(Run(bad_steps).code(), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest bad_model = Request();
  bad_model.set_model("no-such-model-3f9a");
  EXPECT_EQ(Run(bad_model).code(), absl::StatusCode::kNotFound);
  stages_.denoise_error = absl::UnavailableError("denoise is down");
  EXPECT_EQ(Run(Request()).code(), absl::StatusCode::kUnavailable);

  const std::string text = Text();
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_requests_total{code=\"INVALID_ARGUMENT\",",
                                           M(), "} 1")));
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("diffmesh_requests_total{code=\"UNAVAILABLE\",", M(), "} 1")));
  EXPECT_THAT(text, HasSubstr("diffmesh_requests_total{code=\"NOT_FOUND\",model=\"unknown\"} 1"));
  EXPECT_THAT(text, Not(HasSubstr("no-such-model")));
  // Gauges return to zero whichever way a request ends.
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_requests_in_flight{", M(), "} 0")));
  EXPECT_THAT(text, HasSubstr("diffmesh_requests_waiting{stage=\"orchestrator\"} 0"));
  // Only successful requests are timed end to end.
  EXPECT_THAT(text, Not(HasSubstr("diffmesh_request_duration_seconds_count")));
}

}  // namespace
}  // namespace diffmesh
