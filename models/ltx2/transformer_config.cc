// Ltx2TransformerConfig: reading and checking transformer/config.json.
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/core/config_json.h"
#include "models/ltx2/transformer.h"

namespace diffmesh::models::ltx2 {
namespace {

constexpr char kComponent[] = "transformer";

absl::Status ReadFields(const nlohmann::json& json, Ltx2TransformerConfig& c) {
  const std::pair<const char*, int64_t*> ints[] = {
      {"in_channels", &c.in_channels},
      {"patch_size", &c.patch_size},
      {"patch_size_t", &c.patch_size_t},
      {"num_attention_heads", &c.num_attention_heads},
      {"attention_head_dim", &c.attention_head_dim},
      {"cross_attention_dim", &c.cross_attention_dim},
      {"pos_embed_max_pos", &c.pos_embed_max_pos},
      {"base_height", &c.base_height},
      {"base_width", &c.base_width},
      {"audio_in_channels", &c.audio_in_channels},
      {"audio_patch_size", &c.audio_patch_size},
      {"audio_patch_size_t", &c.audio_patch_size_t},
      {"audio_num_attention_heads", &c.audio_num_attention_heads},
      {"audio_attention_head_dim", &c.audio_attention_head_dim},
      {"audio_cross_attention_dim", &c.audio_cross_attention_dim},
      {"audio_scale_factor", &c.audio_scale_factor},
      {"audio_pos_embed_max_pos", &c.audio_pos_embed_max_pos},
      {"audio_sampling_rate", &c.audio_sampling_rate},
      {"audio_hop_length", &c.audio_hop_length},
      {"num_layers", &c.num_layers},
      {"caption_channels", &c.caption_channels},
      {"causal_offset", &c.causal_offset},
  };
  for (const auto& [key, out] : ints) RETURN_IF_ERROR(ReadConfigField(json, kComponent, key, *out));
  const std::pair<const char*, bool*> bools[] = {
      {"gated_attn", &c.gated_attn},
      {"cross_attn_mod", &c.cross_attn_mod},
      {"audio_gated_attn", &c.audio_gated_attn},
      {"audio_cross_attn_mod", &c.audio_cross_attn_mod},
      {"norm_elementwise_affine", &c.norm_elementwise_affine},
      {"attention_bias", &c.attention_bias},
      {"attention_out_bias", &c.attention_out_bias},
      {"rope_double_precision", &c.rope_double_precision},
      {"use_prompt_embeddings", &c.use_prompt_embeddings},
      {"perturbed_attn", &c.perturbed_attn},
      {"ff_bias", &c.ff_bias},
      {"audio_ff_bias", &c.audio_ff_bias},
      {"use_prompt_adaln_single", &c.use_prompt_adaln_single},
      {"use_keyframes_abs_pos_embedding", &c.use_keyframes_abs_pos_embedding},
  };
  for (const auto& [key, out] : bools)
    RETURN_IF_ERROR(ReadConfigField(json, kComponent, key, *out));
  const std::pair<const char*, double*> doubles[] = {
      {"norm_eps", &c.norm_eps},
      {"rope_theta", &c.rope_theta},
      {"timestep_scale_multiplier", &c.timestep_scale_multiplier},
      {"cross_attn_timestep_scale_multiplier", &c.cross_attn_timestep_scale_multiplier},
  };
  for (const auto& [key, out] : doubles) {
    RETURN_IF_ERROR(ReadConfigField(json, kComponent, key, *out));
  }
  RETURN_IF_ERROR(ReadConfigField(json, kComponent, "activation_fn", c.activation_fn));
  RETURN_IF_ERROR(ReadConfigField(json, kComponent, "qk_norm", c.qk_norm));
  return absl::OkStatus();
}

// out_channels: absent → 128 (constructor default), null → in_channels; same for audio.
absl::Status ReadOutChannels(const nlohmann::json& json, const char* key, int64_t in,
                             int64_t& out) {
  auto it = json.find(key);
  if (it != json.end() && it->is_null()) {
    out = in;
    return absl::OkStatus();
  }
  return ReadConfigField(json, kComponent, key, out);
}

absl::Status ReadSpecialFields(const nlohmann::json& json, Ltx2TransformerConfig& c) {
  RETURN_IF_ERROR(ReadOutChannels(json, "out_channels", c.in_channels, c.out_channels));
  RETURN_IF_ERROR(
      ReadOutChannels(json, "audio_out_channels", c.audio_in_channels, c.audio_out_channels));
  std::string rope = "interleaved";
  RETURN_IF_ERROR(ReadConfigField(json, kComponent, "rope_type", rope));
  if (rope == "split") {
    c.rope_type = RopeType::kSplit;
  } else if (rope == "interleaved") {
    c.rope_type = RopeType::kInterleaved;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("transformer config: rope_type '", rope,
                                                   "' is neither 'split' nor 'interleaved'"));
  }
  std::vector<int64_t> scales(c.vae_scale_factors.begin(), c.vae_scale_factors.end());
  RETURN_IF_ERROR(ReadConfigField(json, kComponent, "vae_scale_factors", scales));
  if (scales.size() != 3) {
    return absl::InvalidArgumentError("transformer config: vae_scale_factors needs 3 values");
  }
  for (int i = 0; i < 3; ++i) c.vae_scale_factors[i] = scales[i];
  return absl::OkStatus();
}

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("transformer config: ", what));
}

absl::Status Check(const Ltx2TransformerConfig& c) {
  for (int64_t v : {c.in_channels,
                    c.out_channels,
                    c.patch_size,
                    c.patch_size_t,
                    c.num_attention_heads,
                    c.attention_head_dim,
                    c.cross_attention_dim,
                    c.audio_in_channels,
                    c.audio_out_channels,
                    c.audio_patch_size_t,
                    c.audio_num_attention_heads,
                    c.audio_attention_head_dim,
                    c.audio_cross_attention_dim,
                    c.audio_scale_factor,
                    c.audio_sampling_rate,
                    c.audio_hop_length,
                    c.caption_channels,
                    c.pos_embed_max_pos,
                    c.audio_pos_embed_max_pos,
                    c.base_height,
                    c.base_width}) {
    if (v <= 0) return Invalid("sizes must be positive");
  }
  if (c.num_layers < 0) return Invalid("num_layers < 0");
  if (c.qk_norm != "rms_norm_across_heads") {
    return Invalid(absl::StrCat("qk_norm '", c.qk_norm, "' (only rms_norm_across_heads)"));
  }
  if (c.activation_fn != "gelu-approximate" && c.activation_fn != "gelu") {
    return Invalid(absl::StrCat("activation_fn '", c.activation_fn, "'"));
  }
  // The audio↔video RoPE has audio_cross_attention_dim channels and rotates audio-width
  // projections; split tables are cut into video heads on one side and audio heads on the other.
  if (c.audio_cross_attention_dim != c.audio_inner_dim()) {
    return Invalid("audio_cross_attention_dim must equal audio heads × audio head dim");
  }
  if (c.attention_head_dim % 2 != 0 || c.audio_attention_head_dim % 2 != 0) {
    return Invalid("head dims must be even for the rotary embedding");
  }
  if (c.rope_type == RopeType::kSplit &&
      ((c.audio_cross_attention_dim / 2) % c.num_attention_heads != 0)) {
    return Invalid("audio_cross_attention_dim / 2 must divide by num_attention_heads (split rope)");
  }
  if (c.use_prompt_embeddings && (c.cross_attention_dim != c.inner_dim())) {
    return Invalid("with use_prompt_embeddings, cross_attention_dim must equal the inner dim");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Ltx2TransformerConfig> Ltx2TransformerConfig::FromJson(const nlohmann::json& json) {
  if (!json.is_object()) return Invalid("not an object");
  Ltx2TransformerConfig c;
  RETURN_IF_ERROR(ReadFields(json, c));
  RETURN_IF_ERROR(ReadSpecialFields(json, c));
  RETURN_IF_ERROR(Check(c));
  return c;
}

absl::StatusOr<Ltx2TransformerConfig> Ltx2TransformerConfig::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(path));
  return FromJson(json);
}

}  // namespace diffmesh::models::ltx2
