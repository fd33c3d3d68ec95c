#include "services/orchestrator/request_validator.h"

#include <cmath>
#include <mutex>
#include <random>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/media/image_codec.h"
#include "common/status/status_macros.h"

namespace diffmesh {
namespace {

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

std::string NewRequestId() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrCat("req-", absl::Hex(rng(), absl::kZeroPad16));
}

uint64_t NewSeed() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return rng() >> 1;  // fits int64 for clients that only have signed integers
}

std::string RoleName(v1::MediaRole role) {
  std::string name = v1::MediaRole_Name(role);
  const std::string prefix = "MEDIA_ROLE_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  return absl::AsciiStrToLower(name);
}

absl::Status CheckText(const v1::GenerateRequest& r, const v1::ModelLimits& lim) {
  if (r.prompt().empty()) return Invalid("prompt", "must not be empty");
  for (auto [field, text] : {std::pair<const char*, const std::string*>{"prompt", &r.prompt()},
                             {"negative_prompt", &r.negative_prompt()}}) {
    if (static_cast<int64_t>(text->size()) > lim.max_prompt_bytes()) {
      return Invalid(field, absl::StrCat(text->size(), " bytes, the limit is ",
                                         lim.max_prompt_bytes()));
    }
  }
  if (r.request_id().size() > static_cast<size_t>(kMaxRequestIdBytes)) {
    return Invalid("request_id", absl::StrCat(r.request_id().size(), " bytes, the limit is ",
                                              kMaxRequestIdBytes));
  }
  for (unsigned char c : r.request_id()) {
    if (c < 0x21 || c > 0x7e) return Invalid("request_id", "only visible ASCII characters");
  }
  return absl::OkStatus();
}

absl::Status CheckInputs(const v1::GenerateRequest& r, const PipelineModel& m) {
  for (int i = 0; i < r.inputs_size(); ++i) {
    const v1::InputMedia& in = r.inputs(i);
    const std::string field = absl::StrCat("inputs[", i, "]");
    bool accepted = false;
    for (v1::MediaRole role : m.input_roles) accepted |= role == in.role();
    if (!accepted) {
      std::vector<std::string> roles;
      for (v1::MediaRole role : m.input_roles) roles.push_back(RoleName(role));
      return Invalid(field + ".role",
                     absl::StrCat("'", RoleName(in.role()), "' is not accepted by ", m.name,
                                  roles.empty() ? " (it takes no input media)"
                                                : absl::StrCat(" (it accepts: ",
                                                               absl::StrJoin(roles, ", "), ")")));
    }
    if (in.data().empty()) return Invalid(field + ".data", "is empty");
    if (m.limits.max_input_bytes() > 0 &&
        static_cast<int64_t>(in.data().size()) > m.limits.max_input_bytes()) {
      return Invalid(field + ".data", absl::StrCat(in.data().size(), " bytes, the limit is ",
                                                   m.limits.max_input_bytes()));
    }
    // Decoded here once, so that a stage never sees a file it cannot read: the header's size
    // is checked against the limit before any pixel is allocated.
    media::DecodeLimits limits;
    if (m.limits.max_input_pixels() > 0) {
      limits.max_pixels = m.limits.max_input_pixels();
    }
    if (auto image = media::DecodeImage(in.data(), limits); !image.ok()) {
      return Invalid(field + ".data", std::string(image.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSize(const char* field, int v, const PipelineModel& m) {
  const v1::ModelLimits& lim = m.limits;
  if (v < lim.min_size() || v > lim.max_size() || v % lim.size_granularity() != 0) {
    // In 64 bits: v may be any int32 (v + g / 2 overflowed int at INT_MAX).
    const int64_t g = lim.size_granularity();
    const int64_t nearest = std::min<int64_t>(
        lim.max_size(), std::max<int64_t>(lim.min_size(), (int64_t{v} + g / 2) / g * g));
    return Invalid(field, absl::StrCat(v, " is not allowed for ", m.name, " (a multiple of ", g,
                                       " in ", lim.min_size(), "..", lim.max_size(),
                                       "; nearest: ", nearest, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckVideo(const v1::GenerateRequest& r, const PipelineModel& m) {
  if (m.kind != ModelKind::kVideoWithAudio) {
    if (r.has_num_frames()) return Invalid("num_frames", m.name + " makes images");
    if (r.has_frame_rate()) return Invalid("frame_rate", m.name + " makes images");
    return absl::OkStatus();
  }
  const v1::FrameRule& rule = m.limits.frames();
  const int f = r.num_frames();
  if (f < 1 || f > rule.max_frames() || (f - rule.offset()) % rule.multiple() != 0 ||
      f < rule.offset()) {
    // In 64 bits: f may be any int32 (f - offset overflowed int at INT_MIN, k * multiple at
    // INT_MAX).
    const int64_t k = std::max<int64_t>(
        0, (int64_t{f} - rule.offset() + rule.multiple() / 2) / rule.multiple());
    const int64_t nearest =
        std::min<int64_t>(rule.max_frames(), k * rule.multiple() + rule.offset());
    return Invalid("num_frames",
                   absl::StrCat(f, " is not allowed for ", m.name, " (", rule.multiple(), "k+",
                                rule.offset(), ", at most ", rule.max_frames(), "; nearest: ",
                                nearest, ")"));
  }
  if (!std::isfinite(r.frame_rate()) || r.frame_rate() <= 0 || r.frame_rate() > 240) {
    return Invalid("frame_rate", absl::StrCat(r.frame_rate(), " must lie in (0, 240]"));
  }
  return absl::OkStatus();
}

// `prefix` + `name` is the field; the name is only built for an error (every request passes
// here).
absl::Status CheckScale(absl::string_view prefix, absl::string_view name, bool has, float v,
                        float lo, float hi) {
  if (has && (!std::isfinite(v) || v < lo || v > hi)) {
    return Invalid(absl::StrCat(prefix, name), absl::StrCat(v, " must lie in ", lo, "..", hi));
  }
  return absl::OkStatus();
}

absl::Status CheckStream(absl::string_view field, const v1::StreamGuidance& g) {
  RETURN_IF_ERROR(
      CheckScale(field, ".cfg_scale", g.has_cfg_scale(), g.cfg_scale(), 0, kMaxGuidanceScale));
  RETURN_IF_ERROR(CheckScale(field, ".stg_scale", g.has_stg_scale(), g.stg_scale(),
                             -kMaxGuidanceScale, kMaxGuidanceScale));
  RETURN_IF_ERROR(CheckScale(field, ".modality_scale", g.has_modality_scale(), g.modality_scale(),
                             0, kMaxGuidanceScale));
  return CheckScale(field, ".rescale", g.has_rescale(), g.rescale(), 0, 1);
}

absl::Status CheckGuidance(const v1::GenerateRequest& r, const PipelineModel& m) {
  const v1::Guidance& g = r.guidance();
  RETURN_IF_ERROR(CheckStream("guidance.main", g.main()));
  if (g.has_audio() && m.kind != ModelKind::kVideoWithAudio) {
    return Invalid("guidance.audio", m.name + " has no audio stream");
  }
  RETURN_IF_ERROR(CheckStream("guidance.audio", g.audio()));
  for (int b : g.stg_blocks().blocks()) {
    if (b < 0) return Invalid("guidance.stg_blocks", absl::StrCat(b, " is not a block index"));
  }
  if (g.has_skip_step() && (g.skip_step() < 0 || g.skip_step() >= r.steps())) {
    return Invalid("guidance.skip_step",
                   absl::StrCat(g.skip_step(), " must lie in 0..", r.steps() - 1));
  }
  return absl::OkStatus();
}

absl::Status CheckOutput(const v1::OutputOptions& o, const PipelineModel& m) {
  using v1::OutputFormat;
  const bool video = m.kind == ModelKind::kVideoWithAudio;
  switch (o.format()) {
    case v1::OUTPUT_FORMAT_PNG:
    case v1::OUTPUT_FORMAT_JPEG:
    case v1::OUTPUT_FORMAT_WEBP:
      if (video) return Invalid("output.format", m.name + " makes video (MP4, RAW, LATENTS)");
      break;
    case v1::OUTPUT_FORMAT_MP4:
      if (!video) return Invalid("output.format", m.name + " makes images (PNG, JPEG, WEBP, RAW, LATENTS)");
      break;
    case v1::OUTPUT_FORMAT_RAW:
    case v1::OUTPUT_FORMAT_LATENTS:
      break;
    default:
      return Invalid("output.format", absl::StrCat("unknown value ", o.format()));
  }
  if (!o.has_quality()) return absl::OkStatus();
  if (o.format() == v1::OUTPUT_FORMAT_JPEG) {
    return CheckScale("output", ".quality", true, o.quality(), 1, 100);
  }
  if (o.format() == v1::OUTPUT_FORMAT_WEBP) {
    return CheckScale("output", ".quality", true, o.quality(), 0, 100);
  }
  return Invalid("output.quality", "only JPEG and WEBP outputs take a quality");
}

// The model's defaults under the request's values. Repeated fields replace, never append.
v1::GenerateRequest Resolve(const PipelineModel& m, const v1::GenerateRequest& r) {
  v1::GenerateRequest a = m.defaults;
  a.clear_inputs();
  a.MergeFrom(r);
  if (r.guidance().has_stg_blocks()) {
    *a.mutable_guidance()->mutable_stg_blocks() = r.guidance().stg_blocks();
  }
  if (r.output().format() == v1::OUTPUT_FORMAT_UNSPECIFIED) {
    a.mutable_output()->set_format(m.defaults.output().format());
  }
  a.set_model(m.name);
  if (a.request_id().empty()) a.set_request_id(NewRequestId());
  if (!r.has_seed()) a.set_seed(NewSeed());
  return a;
}

}  // namespace

absl::StatusOr<v1::GenerateRequest> ValidateRequest(const PipelineConfig& p,
                                                    const v1::GenerateRequest& r) {
  const std::string name = r.model().empty() ? p.default_model : r.model();
  const PipelineModel* m = p.FindModel(name);
  if (m == nullptr) {
    if (name.size() > 200) return absl::NotFoundError("model: unknown (name over 200 bytes)");
    return absl::NotFoundError(absl::StrCat("model: '", name, "' is not served here (see ListModels)"));
  }
  RETURN_IF_ERROR(CheckText(r, m->limits));
  RETURN_IF_ERROR(CheckInputs(r, *m));
  v1::GenerateRequest a = Resolve(*m, r);
  RETURN_IF_ERROR(CheckSize("height", a.height(), *m));
  RETURN_IF_ERROR(CheckSize("width", a.width(), *m));
  RETURN_IF_ERROR(CheckVideo(a, *m));
  if (a.steps() < m->limits.min_steps() || a.steps() > m->limits.max_steps()) {
    return Invalid("steps", absl::StrCat(a.steps(), " is outside ", m->limits.min_steps(), "..",
                                         m->limits.max_steps()));
  }
  RETURN_IF_ERROR(CheckGuidance(a, *m));
  RETURN_IF_ERROR(CheckOutput(a.output(), *m));
  return a;
}

v1::GenerateRequest WithoutMediaBytes(const v1::GenerateRequest& request) {
  v1::GenerateRequest out = request;
  for (v1::InputMedia& in : *out.mutable_inputs()) in.clear_data();
  return out;
}

v1::ListModelsResponse DescribeModels(const PipelineConfig& pipeline) {
  v1::ListModelsResponse out;
  out.set_default_model(pipeline.default_model);
  for (const PipelineModel& m : pipeline.models) {
    v1::ModelInfo* info = out.add_models();
    info->set_name(m.name);
    info->set_description(m.description);
    const bool video = m.kind == ModelKind::kVideoWithAudio;
    info->set_kind(video ? v1::MODEL_KIND_VIDEO_WITH_AUDIO : v1::MODEL_KIND_IMAGE);
    for (v1::MediaRole role : m.input_roles) info->add_input_roles(role);
    for (const auto& s : m.stages) info->add_stages(s.name);
    *info->mutable_limits() = m.limits;
    *info->mutable_defaults() = m.defaults;
    if (video) {
      info->add_output_formats(v1::OUTPUT_FORMAT_MP4);
    } else {
      for (auto f : {v1::OUTPUT_FORMAT_PNG, v1::OUTPUT_FORMAT_JPEG, v1::OUTPUT_FORMAT_WEBP}) {
        info->add_output_formats(f);
      }
    }
    info->add_output_formats(v1::OUTPUT_FORMAT_RAW);
    info->add_output_formats(v1::OUTPUT_FORMAT_LATENTS);
  }
  return out;
}

}  // namespace diffmesh
