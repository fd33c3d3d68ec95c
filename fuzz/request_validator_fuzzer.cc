// Fuzzes ValidateRequest (services/orchestrator/request_validator.h) on a serialized
// diffmesh.v1.GenerateRequest against the built-in pipeline (common/config/default_pipeline.json,
// an image model and a video-with-audio model). A refusal is INVALID_ARGUMENT or NOT_FOUND with a
// message; an accepted request, as it will run, has every value within its model's limits.
#include <cmath>
#include <cstdint>
#include <string>

#include "common/config/pipeline_config.h"
#include "common/media/image_codec.h"
#include "diffmesh/v1/generation.pb.h"
#include "fuzz/fuzz_input.h"
#include "google/protobuf/stubs/logging.h"
#include "services/orchestrator/request_validator.h"

namespace {

using diffmesh::fuzz::Check;
namespace v1 = diffmesh::v1;

const diffmesh::PipelineConfig& Pipeline() {
  static const auto* pipeline = [] {
    auto parsed = diffmesh::PipelineConfig::Parse(diffmesh::PipelineConfig::DefaultJson());
    Check(parsed.ok(), "the default pipeline does not parse");
    return new diffmesh::PipelineConfig(*std::move(parsed));
  }();
  return *pipeline;
}

bool Within(bool has, float v, float lo, float hi) {
  return !has || (std::isfinite(v) && v >= lo && v <= hi);
}

void CheckStream(const v1::StreamGuidance& g) {
  Check(Within(g.has_cfg_scale(), g.cfg_scale(), 0, diffmesh::kMaxGuidanceScale),
        "accepted cfg_scale out of range");
  Check(Within(g.has_stg_scale(), g.stg_scale(), -diffmesh::kMaxGuidanceScale,
               diffmesh::kMaxGuidanceScale),
        "accepted stg_scale out of range");
  Check(Within(g.has_modality_scale(), g.modality_scale(), 0, diffmesh::kMaxGuidanceScale),
        "accepted modality_scale out of range");
  Check(Within(g.has_rescale(), g.rescale(), 0, 1), "accepted rescale out of range");
}

void CheckAccepted(const v1::GenerateRequest& r, const v1::GenerateRequest& a) {
  const diffmesh::PipelineModel* m = Pipeline().FindModel(a.model());
  Check(m != nullptr, "accepted request names an unknown model");
  Check(r.model().empty() || r.model() == a.model(), "the model changed");
  const v1::ModelLimits& lim = m->limits;
  const bool video = m->kind == diffmesh::ModelKind::kVideoWithAudio;

  Check(!a.prompt().empty(), "accepted an empty prompt");
  Check(static_cast<int64_t>(a.prompt().size()) <= lim.max_prompt_bytes() &&
            static_cast<int64_t>(a.negative_prompt().size()) <= lim.max_prompt_bytes(),
        "accepted a prompt over max_prompt_bytes");
  Check(!a.request_id().empty() &&
            a.request_id().size() <= static_cast<size_t>(diffmesh::kMaxRequestIdBytes),
        "accepted request_id empty or too long");
  for (unsigned char c : a.request_id()) Check(c >= 0x21 && c <= 0x7e, "request_id not visible");
  Check(a.has_seed(), "no seed");
  if (r.has_seed()) Check(a.seed() == r.seed(), "the request's seed changed");
  if (!r.request_id().empty()) Check(a.request_id() == r.request_id(), "request_id changed");

  Check(a.inputs_size() == r.inputs_size(), "inputs added or dropped");
  for (const v1::InputMedia& in : a.inputs()) {
    bool role = false;
    for (v1::MediaRole accepted : m->input_roles) role |= accepted == in.role();
    Check(role, "accepted an input role the model does not take");
    Check(!in.data().empty(), "accepted empty input data");
    Check(lim.max_input_bytes() <= 0 ||
              static_cast<int64_t>(in.data().size()) <= lim.max_input_bytes(),
          "accepted input data over max_input_bytes");
    diffmesh::media::DecodeLimits limits;
    if (lim.max_input_pixels() > 0) limits.max_pixels = lim.max_input_pixels();
    Check(diffmesh::media::DecodeImage(in.data(), limits).ok(),
          "accepted input data that does not decode within the limits");
  }

  for (int size : {a.height(), a.width()}) {
    Check(size >= lim.min_size() && size <= lim.max_size() &&
              size % lim.size_granularity() == 0,
          "accepted a height or width outside the limits");
  }
  Check(a.steps() >= lim.min_steps() && a.steps() <= lim.max_steps(), "accepted steps out of range");
  if (video) {
    const v1::FrameRule& rule = lim.frames();
    const int f = a.num_frames();
    Check(f >= 1 && f <= rule.max_frames() && f >= rule.offset() &&
              (f - rule.offset()) % rule.multiple() == 0,
          "accepted num_frames outside the frame rule");
    Check(std::isfinite(a.frame_rate()) && a.frame_rate() > 0 && a.frame_rate() <= 240,
          "accepted a frame_rate out of range");
  } else {
    Check(!r.has_num_frames() && !r.has_frame_rate(), "accepted frames for an image model");
    Check(!r.guidance().has_audio(), "accepted audio guidance for an image model");
  }

  const v1::Guidance& g = a.guidance();
  CheckStream(g.main());
  CheckStream(g.audio());
  for (int b : g.stg_blocks().blocks()) Check(b >= 0, "accepted a negative STG block");
  Check(!g.has_skip_step() || (g.skip_step() >= 0 && g.skip_step() < a.steps()),
        "accepted skip_step out of range");

  const v1::OutputOptions& o = a.output();
  switch (o.format()) {
    case v1::OUTPUT_FORMAT_PNG:
    case v1::OUTPUT_FORMAT_JPEG:
    case v1::OUTPUT_FORMAT_WEBP:
      Check(!video, "accepted an image format for a video model");
      break;
    case v1::OUTPUT_FORMAT_MP4:
      Check(video, "accepted MP4 for an image model");
      break;
    case v1::OUTPUT_FORMAT_RAW:
    case v1::OUTPUT_FORMAT_LATENTS:
      break;
    default:
      Check(false, "accepted an unknown output format");
  }
  if (o.has_quality()) {
    Check((o.format() == v1::OUTPUT_FORMAT_JPEG && o.quality() >= 1 && o.quality() <= 100) ||
              (o.format() == v1::OUTPUT_FORMAT_WEBP && o.quality() >= 0 && o.quality() <= 100),
          "accepted a quality out of range or for a format without one");
  }

  // What Accepted reports: the same request without the media bytes.
  const v1::GenerateRequest reported = diffmesh::WithoutMediaBytes(a);
  Check(reported.inputs_size() == a.inputs_size(), "WithoutMediaBytes dropped inputs");
  for (const v1::InputMedia& in : reported.inputs()) Check(in.data().empty(), "bytes kept");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // Parsing logs every string field that is not UTF-8; a refused parse is all that matters.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto accepted = diffmesh::ValidateRequest(Pipeline(), request);
  if (!accepted.ok()) {
    Check(accepted.status().code() == absl::StatusCode::kInvalidArgument ||
              accepted.status().code() == absl::StatusCode::kNotFound,
          "a refusal that is neither INVALID_ARGUMENT nor NOT_FOUND");
    Check(!accepted.status().message().empty(), "a refusal without a message");
    return 0;
  }
  CheckAccepted(request, *accepted);
  return 0;
}
