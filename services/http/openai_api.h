// Translation between OpenAI's images / videos / models HTTP API and diffmesh.v1: request bodies
// to GenerateRequest, results and statuses to OpenAI's JSON shapes. No HTTP library, no gRPC:
// unit-tested on its own (openai_api_test.cc).
#ifndef DIFFMESH_SERVICES_HTTP_OPENAI_API_H_
#define DIFFMESH_SERVICES_HTTP_OPENAI_API_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "diffmesh/v1/generation.pb.h"
#include "nlohmann/json.hpp"

namespace diffmesh::http {

// An error as OpenAI's API reports it: {"error": {"message", "type", "param", "code"}} with the
// HTTP status.
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type;   // "invalid_request_error", "authentication_error", ...
  std::string param;  // the request field at fault; empty: none
  std::string code;   // e.g. "model_not_found", "deadline_exceeded"; empty: none
};

// INVALID_ARGUMENT whose message names `param`, which ErrorFromStatus reports as the error's
// "param".
absl::Status FieldError(absl::string_view param, absl::string_view message);

// The HTTP status and OpenAI error of a diffmesh status: INVALID_ARGUMENT / OUT_OF_RANGE /
// FAILED_PRECONDITION 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, CANCELLED 499, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, else 500.
// The param comes from FieldError, or from the orchestrator's message ("inputs[0].role: ...",
// "model: ...").
ApiError ErrorFromStatus(const absl::Status& status);
// An error for an HTTP status the server decides itself (404 route, 413 body, 431 headers...).
ApiError ErrorForHttpStatus(int http_status, std::string message);
nlohmann::json ErrorJson(const ApiError& error);

// Request fields. A body is a JSON object; multipart form fields arrive as strings, so every
// number may also be given as a string holding one.
struct ImageOptions {
  int n = 1;                  // images, 1..10; one Generate each (seeds seed, seed+1, ...)
  bool stream = false;        // server-sent events
  std::string output_format;  // "png" / "jpeg" / "webp"; empty: the model's own
};

// The fields shared by /v1/images/generations, /v1/images/edits and /v1/videos: model, prompt,
// size ("WxH" or "auto"), negative_prompt, seed, steps (or num_inference_steps), guidance
// (cfg_scale / guidance_scale, stg_scale, modality_scale, guidance_rescale, audio_cfg_scale,
// audio_stg_scale, audio_modality_scale, audio_guidance_rescale, stg_blocks, skip_step),
// output_format + output_compression. `request` is filled; errors name the field.
absl::Status ParseCommonFields(const nlohmann::json& body, v1::GenerateRequest* request);

// /v1/images/generations and /v1/images/edits: ParseCommonFields plus n, response_format
// (only "b64_json"; "url" is refused), stream.
absl::Status ParseImageFields(const nlohmann::json& body, v1::GenerateRequest* request,
                              ImageOptions* options);

// /v1/videos: ParseCommonFields plus seconds (a clip length, turned into frames with the model's
// frame rate and frame rule) and diffmesh's num_frames / frame_rate. `model` is the model the
// request runs on (its kind, defaults and limits); for an image model seconds is ignored (the
// job makes that model's output).
absl::Status ParseVideoFields(const nlohmann::json& body, const v1::ModelInfo* model,
                              v1::GenerateRequest* request);

// The frame count for `seconds` at `frame_rate` under `rule`: the count multiple·k + offset
// (k >= 1) nearest to seconds·frame_rate, at most max_frames when that is set.
int FramesForSeconds(double seconds, double frame_rate, const v1::FrameRule& rule);

// Converts multipart text fields to a JSON object (values stay strings; repeated names keep the
// last value).
nlohmann::json FormFieldsToJson(const std::vector<std::pair<std::string, std::string>>& fields);

// One image of an images response: {"b64_json", "diffmesh": {request_id, seed, total_seconds,
// timings}}.
nlohmann::json ImageDataJson(const v1::GenerateResult& result);
// The images response: {"created", "data": [...], "output_format", "size"}.
nlohmann::json ImagesResponseJson(const std::vector<v1::GenerateResult>& results, int64_t created);
// The models list: {"object": "list", "data": [{"id", "object": "model", "created", "owned_by",
// "diffmesh": {kind, description, stages, defaults...}}]}.
nlohmann::json ModelsJson(const v1::ListModelsResponse& models);

// The output a /content download returns: the first video output, else the first output.
const v1::Output* PrimaryOutput(const v1::GenerateResult& result);

// "image/png" → "png", "video/mp4" → "mp4"...; empty for an unknown type.
std::string FormatOfMime(absl::string_view mime);

std::string Base64Encode(absl::string_view bytes);

}  // namespace diffmesh::http

#endif  // DIFFMESH_SERVICES_HTTP_OPENAI_API_H_
