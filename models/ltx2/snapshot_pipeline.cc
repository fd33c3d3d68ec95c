#include "models/ltx2/snapshot_pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"

namespace diffmesh::models::ltx2 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference pipeline's request defaults (see the header for their sources).
constexpr int64_t kDefaultHeight = 512;
constexpr int64_t kDefaultWidth = 768;
constexpr int64_t kDefaultFrames = 121;
constexpr int64_t kStepsV20 = 40, kStepsV23 = 30;
constexpr int64_t kStgBlockV20 = 29, kStgBlockV23 = 28;
// A serving bound, not a model property: long enough for LTX-2's enhanced prompts (the text
// encoder truncates at the tokenizer's model_max_length tokens anyway).
constexpr int64_t kMaxPromptBytes = 8000;

// The configs' values the entry is made from, each with the reference constructor's default.
struct EntryInputs {
  int64_t spatial_ratio = 32, temporal_ratio = 8;   // vae
  int64_t patch_size = 1, patch_size_t = 1;         // transformer
  int64_t base_height = 2048, base_width = 2048;    // transformer
  int64_t pos_embed_max_pos = 20;                   // transformer, seconds of video
  int64_t num_layers = 48;                          // transformer
  bool gated_attn = false, perturbed_attn = false;  // transformer (2.3 flags)
  int64_t num_train_timesteps = 1000;               // scheduler
};

// Reads `field` of `config` when present; errors name the file and the field.
template <typename T>
absl::Status Field(const json& config, const std::string& file, const char* field, T& out) {
  return ReadConfigField(config, file.c_str(), field, out);
}

absl::StatusOr<EntryInputs> ReadInputs(const fs::path& root) {
  EntryInputs in;
  const std::string vae_file = (root / "vae" / "config.json").string();
  ASSIGN_OR_RETURN(json vae, ReadJsonFile(vae_file));
  // The released configs carry both ratios; the reference derives absent ones from the
  // encoder's scaling flags (video_vae.cc does too). Its defaults are these values.
  RETURN_IF_ERROR(Field(vae, vae_file, "spatial_compression_ratio", in.spatial_ratio));
  RETURN_IF_ERROR(Field(vae, vae_file, "temporal_compression_ratio", in.temporal_ratio));

  const std::string dit_file = (root / "transformer" / "config.json").string();
  ASSIGN_OR_RETURN(json dit, ReadJsonFile(dit_file));
  RETURN_IF_ERROR(Field(dit, dit_file, "patch_size", in.patch_size));
  RETURN_IF_ERROR(Field(dit, dit_file, "patch_size_t", in.patch_size_t));
  RETURN_IF_ERROR(Field(dit, dit_file, "base_height", in.base_height));
  RETURN_IF_ERROR(Field(dit, dit_file, "base_width", in.base_width));
  RETURN_IF_ERROR(Field(dit, dit_file, "pos_embed_max_pos", in.pos_embed_max_pos));
  RETURN_IF_ERROR(Field(dit, dit_file, "num_layers", in.num_layers));
  RETURN_IF_ERROR(Field(dit, dit_file, "gated_attn", in.gated_attn));
  RETURN_IF_ERROR(Field(dit, dit_file, "perturbed_attn", in.perturbed_attn));

  const std::string sched_file = (root / "scheduler" / "scheduler_config.json").string();
  ASSIGN_OR_RETURN(json sched, ReadJsonFile(sched_file));
  RETURN_IF_ERROR(Field(sched, sched_file, "num_train_timesteps", in.num_train_timesteps));

  // Bounds that keep the products below meaningful (the networks' own readers check the rest).
  auto positive = [](int64_t v, int64_t max) { return v >= 1 && v <= max; };
  if (!positive(in.spatial_ratio, 1024) || !positive(in.temporal_ratio, 1024)) {
    return absl::InvalidArgumentError(
        absl::StrCat(vae_file, ": spatial/temporal_compression_ratio must lie in 1..1024"));
  }
  if (!positive(in.patch_size, 64) || !positive(in.patch_size_t, 64) ||
      !positive(in.base_height, 1 << 20) || !positive(in.base_width, 1 << 20) ||
      !positive(in.pos_embed_max_pos, 1 << 20) || !positive(in.num_layers, 1 << 16)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dit_file,
                     ": patch_size, patch_size_t, base_height, base_width, pos_embed_max_pos and "
                     "num_layers must be positive (and sane)"));
  }
  if (!positive(in.num_train_timesteps, 1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat(sched_file, ": num_train_timesteps must be positive"));
  }
  return in;
}

}  // namespace

bool IsLtx2Snapshot(const std::string& dir) {
  auto index = ReadJsonFile((fs::path(dir) / "model_index.json").string());
  return index.ok() && index->value("_class_name", json()) == kLtx2PipelineClassName;
}

absl::StatusOr<json> Ltx2SnapshotPipelineEntry(const std::string& dir) {
  const fs::path root(dir);
  const std::string index_file = (root / "model_index.json").string();
  ASSIGN_OR_RETURN(json index, ReadJsonFile(index_file));
  if (index.value("_class_name", json()) != kLtx2PipelineClassName) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_file, ": _class_name is not ", kLtx2PipelineClassName));
  }
  ASSIGN_OR_RETURN(EntryInputs in, ReadInputs(root));

  const int64_t granularity = in.spatial_ratio * in.patch_size;
  const int64_t max_size =
      std::max(granularity, std::min(in.base_height, in.base_width) / granularity * granularity);
  const int64_t multiple = in.temporal_ratio * in.patch_size_t;
  const int64_t max_frames =
      (static_cast<int64_t>(std::floor(in.pos_embed_max_pos * kLtx2DefaultFrameRate)) / multiple) *
          multiple +
      1;
  const bool v23 = in.gated_attn;
  auto side = [&](int64_t v) {
    return std::clamp(v / granularity * granularity, granularity, max_size);
  };
  const int64_t frames = std::min(kDefaultFrames - 1, max_frames - 1) / multiple * multiple + 1;
  const int64_t steps = std::min(v23 ? kStepsV23 : kStepsV20, in.num_train_timesteps);
  const int64_t stg_block = std::min(v23 ? kStgBlockV23 : kStgBlockV20, in.num_layers - 1);
  const double stg = in.perturbed_attn ? 1.0 : 0.0;

  json defaults = {
      {"height", side(kDefaultHeight)},
      {"width", side(kDefaultWidth)},
      {"num_frames", frames},
      {"frame_rate", kLtx2DefaultFrameRate},
      {"steps", steps},
      {"guidance",
       {{"main",
         {{"cfg_scale", 3.0}, {"stg_scale", stg}, {"modality_scale", 3.0}, {"rescale", 0.7}}},
        {"audio",
         {{"cfg_scale", 7.0}, {"stg_scale", stg}, {"modality_scale", 3.0}, {"rescale", 0.7}}},
        {"stg_blocks", {{"blocks", json::array({stg_block})}}}}},
      {"output", {{"format", "OUTPUT_FORMAT_MP4"}}}};
  json limits = {{"size_granularity", granularity},
                 {"min_size", granularity},
                 {"max_size", max_size},
                 {"min_steps", 1},
                 {"max_steps", in.num_train_timesteps},
                 {"max_prompt_bytes", kMaxPromptBytes},
                 {"frames", {{"multiple", multiple}, {"offset", 1}, {"max_frames", max_frames}}}};
  json stages = json::array({{{"name", "encoder"}, {"kind", "encoder"}, {"service", "encoder"}},
                             {{"name", "denoise"},
                              {"kind", "denoise"},
                              {"service", "denoise"},
                              {"inputs", json::array({"encoder"})}},
                             {{"name", "vae_decode"},
                              {"kind", "decode"},
                              {"service", "denoise"},
                              {"inputs", json::array({"denoise"})}}});
  // Image-to-video is served whenever the denoise stage has the video VAE encoder; a snapshot
  // whose vae/ holds only the decoder has none, and there the stage refuses a first frame
  // (FAILED_PRECONDITION naming the input) — its checkpoint is not opened here.
  return json{{"kind", "video_with_audio"},
              {"input_roles", json::array({"first_frame"})},
              {"description", absl::StrCat(kLtx2PipelineClassName, v23 ? " (LTX-2.3)" : " (LTX-2)",
                                           " snapshot ", dir)},
              {"defaults", std::move(defaults)},
              {"limits", std::move(limits)},
              {"stages", std::move(stages)}};
}

}  // namespace diffmesh::models::ltx2
