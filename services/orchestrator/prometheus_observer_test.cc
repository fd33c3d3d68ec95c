#include "services/orchestrator/prometheus_observer.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/metrics/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/orchestrator/orchestrator_core.h"
#include "services/orchestrator/request_trace.h"
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

TEST_F(PrometheusObserverTest, QueueTimeIncludesTheWaitForTheDenoiseGroup) {
  // The denoise stage reports 7.5 s waiting for its group (one request at a time): that is
  // queue time, not transfer time.
  stages_.denoise_queue_seconds = 7.5;
  ASSERT_TRUE(Run(Request()).ok());
  const std::string text = Text();
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_queue_duration_seconds_count{", M(), "} 1")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_queue_duration_seconds_bucket{", M(),
                                           ",le=\"7.5\"} 0")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_queue_duration_seconds_bucket{", M(),
                                           ",le=\"10\"} 1")));
  // The fake call takes milliseconds: nothing is left for transfer once 7.5 s are queue time.
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_stage_duration_seconds_sum{", M(),
                                           ",stage=\"transfer\"} 0\n")));
  // An image model makes no video series.
  EXPECT_THAT(text, Not(HasSubstr("diffmesh_video_frames_total{")));
  EXPECT_THAT(text, Not(HasSubstr("diffmesh_audio_seconds_total{")));
}

TEST_F(PrometheusObserverTest, VideoOutputsRecordFramesAndSound) {
  // An MP4 of 121 frames at 24 fps with a stereo 48 kHz track, as LTX-2's denoise stage makes.
  v1::OutputInfo video;
  video.set_name("video");
  video.set_kind(v1::OUTPUT_KIND_VIDEO);
  video.set_mime_type("video/mp4");
  video.set_width(64);
  video.set_height(64);
  video.set_frames(121);
  video.set_frame_rate(24);
  video.set_audio_sample_rate(48000);
  video.set_audio_channels(2);
  stages_.denoise_output = video;
  ASSERT_TRUE(Run(Request()).ok());
  ASSERT_TRUE(Run(Request()).ok());
  const std::string text = Text();
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_video_frames_total{", M(), "} 242")));
  // 2 × 121 / 24 s of picture and of sound.
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_video_seconds_total{", M(), "} 10.08333")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_audio_seconds_total{", M(), "} 10.08333")));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_video_frame_seconds_count{", M(), "} 2")));
  // Fake stages answer in milliseconds: far under 1 s per frame.
  EXPECT_THAT(text, HasSubstr(absl::StrCat("diffmesh_video_frame_seconds_bucket{", M(),
                                           ",le=\"1\"} 2")));
}

TEST(RequestTraceMediaTest, RawFramesAndAudioTensors) {
  // OUTPUT_FORMAT_RAW: UINT8 frames [F, H, W, 3] and FLOAT32 audio [C, samples], each output
  // carrying the clip's dimensions; the sound is counted from the audio tensor alone.
  v1::GenerateResult result;
  v1::OutputInfo* frames = result.add_outputs()->mutable_info();
  frames->set_name("frames");
  frames->set_kind(v1::OUTPUT_KIND_TENSOR);
  frames->set_frames(49);
  frames->set_frame_rate(25);
  frames->set_audio_sample_rate(16000);
  frames->set_audio_channels(2);
  for (int64_t d : {49, 32, 48, 3}) frames->add_tensor_shape(d);
  v1::OutputInfo* audio = result.add_outputs()->mutable_info();
  *audio = *frames;
  audio->set_name("audio");
  audio->clear_tensor_shape();
  audio->add_tensor_shape(2);
  audio->add_tensor_shape(12345);  // the vocoder's length, not the clip's
  const RequestObserver::Media media = RequestTrace::MediaOf(result);
  EXPECT_EQ(media.video_frames, 49);
  EXPECT_DOUBLE_EQ(media.video_seconds, 49.0 / 25);
  EXPECT_DOUBLE_EQ(media.audio_seconds, 12345.0 / 16000);

  // An image is neither.
  v1::GenerateResult image;
  v1::OutputInfo* png = image.add_outputs()->mutable_info();
  png->set_name("image");
  png->set_kind(v1::OUTPUT_KIND_IMAGE);
  png->set_frames(1);
  const RequestObserver::Media none = RequestTrace::MediaOf(image);
  EXPECT_EQ(none.video_frames, 0);
  EXPECT_EQ(none.audio_seconds, 0);
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
