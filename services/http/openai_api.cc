#include "services/http/openai_api.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace diffmesh::http {
namespace {

using nlohmann::json;

constexpr absl::string_view kParamPayload = "type.diffmesh.dev/http.param";

// Whether `body` has `name` set to something other than null.
bool Has(const json& body, const char* name) {
  auto it = body.find(name);
  return it != body.end() && !it->is_null();
}

absl::StatusOr<std::string> GetString(const json& body, const char* name) {
  const json& v = body.at(name);
  if (!v.is_string()) return FieldError(name, "must be a string");
  return v.get<std::string>();
}

absl::StatusOr<double> GetNumber(const json& body, const char* name) {
  const json& v = body.at(name);
  if (v.is_number()) return v.get<double>();
  double d;
  if (v.is_string() && absl::SimpleAtod(v.get<std::string>(), &d) && std::isfinite(d)) return d;
  return FieldError(name, "must be a number");
}

absl::StatusOr<int64_t> GetInt(const json& body, const char* name) {
  const json& v = body.at(name);
  if (v.is_number_integer()) return v.get<int64_t>();
  int64_t i;
  if (v.is_string() && absl::SimpleAtoi(v.get<std::string>(), &i)) return i;
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d == std::floor(d) && std::abs(d) < 9e15) return static_cast<int64_t>(d);
  }
  return FieldError(name, "must be an integer");
}

absl::StatusOr<int32_t> GetInt32(const json& body, const char* name, int64_t lo, int64_t hi) {
  auto v = GetInt(body, name);
  if (!v.ok()) return v.status();
  if (*v < lo || *v > hi) {
    return FieldError(name, absl::StrCat("must be in [", lo, ", ", hi, "], got ", *v));
  }
  return static_cast<int32_t>(*v);
}

absl::StatusOr<bool> GetBool(const json& body, const char* name) {
  const json& v = body.at(name);
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_string()) {
    const std::string s = absl::AsciiStrToLower(v.get<std::string>());
    if (s == "true" || s == "1") return true;
    if (s == "false" || s == "0") return false;
  }
  return FieldError(name, "must be a boolean");
}

#define DM_ASSIGN(lhs, expr)                    \
  auto lhs##_or = (expr);                       \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = *lhs##_or

absl::Status ParseSize(const json& body, v1::GenerateRequest* request) {
  if (!Has(body, "size")) return absl::OkStatus();
  DM_ASSIGN(size, GetString(body, "size"));
  if (size == "auto") return absl::OkStatus();
  std::vector<std::string> parts = absl::StrSplit(size, absl::MaxSplits('x', 1));
  int w, h;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &w) || !absl::SimpleAtoi(parts[1], &h) ||
      w <= 0 || h <= 0) {
    return FieldError("size", absl::StrCat("must be \"WIDTHxHEIGHT\" (e.g. \"1024x1024\") or "
                                           "\"auto\", got \"",
                                           size, "\""));
  }
  request->set_width(w);
  request->set_height(h);
  return absl::OkStatus();
}

// A float of a StreamGuidance: `name` in the body → `set`.
template <typename Setter>
absl::Status ParseScale(const json& body, const char* name, Setter set) {
  if (!Has(body, name)) return absl::OkStatus();
  DM_ASSIGN(value, GetNumber(body, name));
  set(static_cast<float>(value));
  return absl::OkStatus();
}

absl::Status ParseGuidance(const json& body, v1::Guidance* g) {
  if (Has(body, "cfg_scale") && Has(body, "guidance_scale")) {
    return FieldError("guidance_scale", "give cfg_scale or guidance_scale, not both");
  }
  for (const char* name : {"cfg_scale", "guidance_scale"}) {
    if (auto s = ParseScale(body, name, [&](float v) { g->mutable_main()->set_cfg_scale(v); });
        !s.ok()) {
      return s;
    }
  }
  struct Field {
    const char* name;
    bool audio;
    void (v1::StreamGuidance::*set)(float);
  };
  static constexpr Field kFields[] = {
      {"stg_scale", false, &v1::StreamGuidance::set_stg_scale},
      {"modality_scale", false, &v1::StreamGuidance::set_modality_scale},
      {"guidance_rescale", false, &v1::StreamGuidance::set_rescale},
      {"audio_cfg_scale", true, &v1::StreamGuidance::set_cfg_scale},
      {"audio_stg_scale", true, &v1::StreamGuidance::set_stg_scale},
      {"audio_modality_scale", true, &v1::StreamGuidance::set_modality_scale},
      {"audio_guidance_rescale", true, &v1::StreamGuidance::set_rescale},
  };
  for (const Field& f : kFields) {
    v1::StreamGuidance* stream = f.audio ? g->mutable_audio() : g->mutable_main();
    if (auto s = ParseScale(body, f.name, [&](float v) { (stream->*f.set)(v); }); !s.ok()) {
      return s;
    }
  }
  if (!g->has_audio() || g->audio().ByteSizeLong() == 0) g->clear_audio();
  if (g->has_main() && g->main().ByteSizeLong() == 0) g->clear_main();
  if (Has(body, "skip_step")) {
    DM_ASSIGN(skip, GetInt32(body, "skip_step", 0, 1000));
    g->set_skip_step(skip);
  }
  if (Has(body, "stg_blocks")) {
    json blocks = body.at("stg_blocks");
    if (blocks.is_string()) {  // a form field: "1,2,3"
      json list = json::array();
      for (absl::string_view b :
           absl::StrSplit(blocks.get<std::string>(), ',', absl::SkipEmpty())) {
        int i;
        if (!absl::SimpleAtoi(b, &i)) return FieldError("stg_blocks", "must be a list of integers");
        list.push_back(i);
      }
      blocks = list;
    }
    if (!blocks.is_array()) return FieldError("stg_blocks", "must be a list of integers");
    for (const json& b : blocks) {
      if (!b.is_number_integer()) return FieldError("stg_blocks", "must be a list of integers");
      g->mutable_stg_blocks()->add_blocks(b.get<int>());
    }
  }
  return absl::OkStatus();
}

absl::Status ParseOutput(const json& body, v1::GenerateRequest* request) {
  if (Has(body, "output_format")) {
    DM_ASSIGN(format, GetString(body, "output_format"));
    format = absl::AsciiStrToLower(format);
    v1::OutputFormat f;
    if (format == "png") {
      f = v1::OUTPUT_FORMAT_PNG;
    } else if (format == "jpeg" || format == "jpg") {
      f = v1::OUTPUT_FORMAT_JPEG;
    } else if (format == "webp") {
      f = v1::OUTPUT_FORMAT_WEBP;
    } else if (format == "mp4") {
      f = v1::OUTPUT_FORMAT_MP4;
    } else {
      return FieldError("output_format",
                        absl::StrCat("must be png, jpeg, webp or mp4, got \"", format, "\""));
    }
    request->mutable_output()->set_format(f);
  }
  if (Has(body, "output_compression")) {
    DM_ASSIGN(q, GetInt32(body, "output_compression", 0, 100));
    const v1::OutputFormat f = request->output().format();
    if (f != v1::OUTPUT_FORMAT_JPEG && f != v1::OUTPUT_FORMAT_WEBP) {
      return FieldError("output_compression", "applies to output_format jpeg or webp only");
    }
    // OpenAI's output_compression is a 0-100 quality; JPEG's quality starts at 1.
    request->mutable_output()->set_quality(f == v1::OUTPUT_FORMAT_JPEG ? std::max(q, 1) : q);
  }
  return absl::OkStatus();
}

#undef DM_ASSIGN

}  // namespace

absl::Status FieldError(absl::string_view param, absl::string_view message) {
  absl::Status s = absl::InvalidArgumentError(absl::StrCat(param, ": ", message));
  s.SetPayload(kParamPayload, absl::Cord(param));
  return s;
}

ApiError ErrorFromStatus(const absl::Status& status) {
  ApiError e;
  e.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      e.http_status = 400;
      e.type = "invalid_request_error";
      break;
    case absl::StatusCode::kUnauthenticated:
      e.http_status = 401;
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      break;
    case absl::StatusCode::kPermissionDenied:
      e.http_status = 403;
      e.type = "permission_error";
      break;
    case absl::StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "invalid_request_error";
      if (absl::StartsWith(e.message, "model")) e.code = "model_not_found";
      break;
    case absl::StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "resource_exhausted";
      break;
    case absl::StatusCode::kCancelled:
      e.http_status = 499;
      e.type = "cancelled";
      e.code = "cancelled";
      break;
    case absl::StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "server_error";
      e.code = "unavailable";
      break;
    case absl::StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.type = "server_error";
      e.code = "deadline_exceeded";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      break;
  }
  if (auto param = status.GetPayload(kParamPayload)) {
    e.param = std::string(*param);
  } else if (e.http_status == 400 || e.http_status == 404) {
    // The orchestrator's messages start with the field: "inputs[0].role: ...", "height: ...".
    const size_t colon = e.message.find(": ");
    if (colon != std::string::npos && colon < 64 && e.message.find(' ') >= colon) {
      e.param = e.message.substr(0, colon);
    }
  }
  return e;
}

ApiError ErrorForHttpStatus(int http_status, std::string message) {
  ApiError e;
  e.http_status = http_status;
  e.message = std::move(message);
  switch (http_status) {
    case 401:
      e.type = "authentication_error";
      e.code = "invalid_api_key";
      break;
    case 404:
    case 405:
      e.type = "invalid_request_error";
      e.code = http_status == 404 ? "not_found" : "method_not_allowed";
      break;
    case 413:
      e.type = "invalid_request_error";
      e.code = "request_too_large";
      break;
    case 429:
      e.type = "rate_limit_error";
      e.code = "resource_exhausted";
      break;
    default:
      e.type = http_status < 500 ? "invalid_request_error" : "server_error";
  }
  return e;
}

nlohmann::json ErrorJson(const ApiError& error) {
  json e = {{"message", error.message}, {"type", error.type}};
  e["param"] = error.param.empty() ? json(nullptr) : json(error.param);
  e["code"] = error.code.empty() ? json(nullptr) : json(error.code);
  return json{{"error", e}};
}

absl::Status ParseCommonFields(const json& body, v1::GenerateRequest* request) {
  if (!body.is_object()) return FieldError("body", "must be a JSON object");
  if (Has(body, "model")) {
    auto model = GetString(body, "model");
    if (!model.ok()) return model.status();
    request->set_model(*model);
  }
  if (!Has(body, "prompt")) return FieldError("prompt", "is required");
  auto prompt = GetString(body, "prompt");
  if (!prompt.ok()) return prompt.status();
  request->set_prompt(*prompt);
  if (Has(body, "negative_prompt")) {
    auto neg = GetString(body, "negative_prompt");
    if (!neg.ok()) return neg.status();
    request->set_negative_prompt(*neg);
  }
  if (auto s = ParseSize(body, request); !s.ok()) return s;
  if (Has(body, "seed")) {
    auto seed = GetInt(body, "seed");
    if (!seed.ok()) return seed.status();
    if (*seed < 0) return FieldError("seed", "must be >= 0");
    request->set_seed(static_cast<uint64_t>(*seed));
  }
  if (Has(body, "steps") && Has(body, "num_inference_steps")) {
    return FieldError("num_inference_steps", "give steps or num_inference_steps, not both");
  }
  for (const char* name : {"steps", "num_inference_steps"}) {
    if (!Has(body, name)) continue;
    auto steps = GetInt32(body, name, 1, 100000);
    if (!steps.ok()) return steps.status();
    request->set_steps(*steps);
  }
  if (auto s = ParseGuidance(body, request->mutable_guidance()); !s.ok()) return s;
  if (request->guidance().ByteSizeLong() == 0) request->clear_guidance();
  return ParseOutput(body, request);
}

absl::Status ParseImageFields(const json& body, v1::GenerateRequest* request,
                              ImageOptions* options) {
  if (auto s = ParseCommonFields(body, request); !s.ok()) return s;
  if (Has(body, "n")) {
    auto n = GetInt32(body, "n", 1, 10);
    if (!n.ok()) return n.status();
    options->n = *n;
  }
  if (Has(body, "response_format")) {
    auto format = GetString(body, "response_format");
    if (!format.ok()) return format.status();
    if (*format != "b64_json") {
      return FieldError("response_format",
                        absl::StrCat("\"", *format,
                                     "\" is not supported: diffmesh returns images "
                                     "inline only (use \"b64_json\")"));
    }
  }
  if (Has(body, "stream")) {
    auto stream = GetBool(body, "stream");
    if (!stream.ok()) return stream.status();
    options->stream = *stream;
  }
  if (request->output().format() == v1::OUTPUT_FORMAT_MP4) {
    return FieldError("output_format", "must be png, jpeg or webp for an image");
  }
  switch (request->output().format()) {
    case v1::OUTPUT_FORMAT_PNG:
      options->output_format = "png";
      break;
    case v1::OUTPUT_FORMAT_JPEG:
      options->output_format = "jpeg";
      break;
    case v1::OUTPUT_FORMAT_WEBP:
      options->output_format = "webp";
      break;
    default:
      options->output_format.clear();
  }
  return absl::OkStatus();
}

int FramesForSeconds(double seconds, double frame_rate, const v1::FrameRule& rule) {
  const int multiple = std::max(1, rule.multiple());
  const double want = seconds * frame_rate;
  int k = static_cast<int>(std::lround((want - rule.offset()) / multiple));
  k = std::max(k, 1);
  int frames = multiple * k + rule.offset();
  if (rule.max_frames() > 0) {
    while (frames > rule.max_frames() && k > 0) frames = multiple * --k + rule.offset();
  }
  return frames;
}

absl::Status ParseVideoFields(const json& body, const v1::ModelInfo* model,
                              v1::GenerateRequest* request) {
  if (auto s = ParseCommonFields(body, request); !s.ok()) return s;
  const bool video = model != nullptr && model->kind() == v1::MODEL_KIND_VIDEO_WITH_AUDIO;
  if (Has(body, "frame_rate")) {
    auto fps = GetNumber(body, "frame_rate");
    if (!fps.ok()) return fps.status();
    if (*fps <= 0) return FieldError("frame_rate", "must be > 0");
    request->set_frame_rate(*fps);
  }
  if (Has(body, "num_frames")) {
    if (Has(body, "seconds"))
      return FieldError("num_frames", "give seconds or num_frames, not both");
    auto frames = GetInt32(body, "num_frames", 1, 1 << 20);
    if (!frames.ok()) return frames.status();
    request->set_num_frames(*frames);
  } else if (Has(body, "seconds")) {
    auto seconds = GetNumber(body, "seconds");
    if (!seconds.ok()) return seconds.status();
    if (*seconds <= 0 || *seconds > 3600) return FieldError("seconds", "must be in (0, 3600]");
    if (video) {
      const double fps = request->has_frame_rate()            ? request->frame_rate()
                         : model->defaults().frame_rate() > 0 ? model->defaults().frame_rate()
                                                              : 24.0;
      request->set_num_frames(FramesForSeconds(*seconds, fps, model->limits().frames()));
    }
  }
  return absl::OkStatus();
}

nlohmann::json FormFieldsToJson(const std::vector<std::pair<std::string, std::string>>& fields) {
  json out = json::object();
  for (const auto& [name, value] : fields) out[name] = value;
  return out;
}

std::string FormatOfMime(absl::string_view mime) {
  if (mime == "image/png") return "png";
  if (mime == "image/jpeg") return "jpeg";
  if (mime == "image/webp") return "webp";
  if (mime == "video/mp4") return "mp4";
  return "";
}

std::string Base64Encode(absl::string_view bytes) { return absl::Base64Escape(bytes); }

const v1::Output* PrimaryOutput(const v1::GenerateResult& result) {
  for (const v1::Output& o : result.outputs()) {
    if (o.info().kind() == v1::OUTPUT_KIND_VIDEO) return &o;
  }
  for (const v1::Output& o : result.outputs()) {
    if (o.info().kind() == v1::OUTPUT_KIND_IMAGE) return &o;
  }
  return result.outputs_size() > 0 ? &result.outputs(0) : nullptr;
}

nlohmann::json ImageDataJson(const v1::GenerateResult& result) {
  const v1::Output* out = PrimaryOutput(result);
  json timings = json::object();
  for (const v1::StageTiming& t : result.metadata().stage_timings())
    timings[t.stage()] = t.seconds();
  json item = {{"b64_json", out != nullptr ? Base64Encode(out->data()) : std::string()}};
  item["diffmesh"] = {
      {"request_id", result.metadata().request_id()},
      {"seed", result.metadata().request().seed()},
      {"model", result.metadata().request().model()},
      {"steps", result.metadata().request().steps()},
      {"mime_type", out != nullptr ? out->info().mime_type() : std::string()},
      {"total_seconds", result.metadata().total_seconds()},
      {"timings", timings},
  };
  return item;
}

nlohmann::json ImagesResponseJson(const std::vector<v1::GenerateResult>& results, int64_t created) {
  json data = json::array();
  for (const v1::GenerateResult& r : results) data.push_back(ImageDataJson(r));
  json out = {{"created", created}, {"data", data}};
  if (!results.empty()) {
    if (const v1::Output* o = PrimaryOutput(results[0])) {
      out["output_format"] = FormatOfMime(o->info().mime_type());
      out["size"] = absl::StrCat(o->info().width(), "x", o->info().height());
    }
  }
  return out;
}

nlohmann::json ModelsJson(const v1::ListModelsResponse& models) {
  json data = json::array();
  for (const v1::ModelInfo& m : models.models()) {
    const v1::GenerateRequest& d = m.defaults();
    json roles = json::array();
    for (int r : m.input_roles())
      roles.push_back(v1::MediaRole_Name(static_cast<v1::MediaRole>(r)));
    json stages = json::array();
    for (const std::string& s : m.stages()) stages.push_back(s);
    data.push_back({
        {"id", m.name()},
        {"object", "model"},
        {"created", 0},
        {"owned_by", "diffmesh"},
        {"diffmesh",
         {{"description", m.description()},
          {"kind", m.kind() == v1::MODEL_KIND_VIDEO_WITH_AUDIO ? "video" : "image"},
          {"default", m.name() == models.default_model()},
          {"input_roles", roles},
          {"stages", stages},
          {"defaults",
           {{"width", d.width()},
            {"height", d.height()},
            {"steps", d.steps()},
            {"num_frames", d.num_frames()},
            {"frame_rate", d.frame_rate()},
            {"cfg_scale", d.guidance().main().cfg_scale()}}},
          {"limits",
           {{"size_granularity", m.limits().size_granularity()},
            {"min_size", m.limits().min_size()},
            {"max_size", m.limits().max_size()},
            {"min_steps", m.limits().min_steps()},
            {"max_steps", m.limits().max_steps()}}}}},
    });
  }
  return json{{"object", "list"}, {"data", data}};
}

}  // namespace diffmesh::http
