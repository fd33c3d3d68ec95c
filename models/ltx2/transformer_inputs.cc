// Ltx2Transformer::ValidateInputs: every input checked against the config before the forward,
// so that a bad request is an INVALID_ARGUMENT naming the input rather than an ATen exception.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "models/ltx2/transformer.h"

namespace diffmesh::models::ltx2 {
namespace {

absl::Status Invalid(const std::string& name, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("ltx2 transformer input '", name, "': ", what));
}

std::string Shape(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ","), "]");
}

// `t` must be defined with shape `expected` (-1 = any size).
absl::Status CheckShape(const std::string& name, const at::Tensor& t,
                        const std::vector<int64_t>& expected) {
  if (!t.defined()) return Invalid(name, "missing");
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) {
    ok = expected[i] < 0 || t.size(i) == expected[i];
  }
  if (ok) return absl::OkStatus();
  return Invalid(name, absl::StrCat("shape ", Shape(t), ", expected [",
                                    absl::StrJoin(expected, ","), "] (-1 = any)"));
}

// Per-sample [B] (or [B, 1]) or per-token [B, tokens].
absl::Status CheckTimestep(const std::string& name, const at::Tensor& t, int64_t batch,
                           int64_t tokens) {
  if (!t.defined()) return Invalid(name, "missing");
  const bool per_sample = t.numel() == batch && t.dim() >= 1 && t.size(0) == batch;
  const bool per_token = t.dim() == 2 && t.size(0) == batch && t.size(1) == tokens;
  if (per_sample || per_token) return absl::OkStatus();
  return Invalid(name, absl::StrCat("shape ", Shape(t), ", expected [", batch, "] or [", batch, ",",
                                    tokens, "]"));
}

absl::Status CheckCoords(const std::string& name, const at::Tensor& t, int64_t batch, int64_t axes,
                         int64_t tokens) {
  if (t.dim() == 3) return CheckShape(name, t, {batch, axes, tokens});
  return CheckShape(name, t, {batch, axes, tokens, 2});
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::Status Ltx2Transformer::ValidateInputs(const Ltx2TransformerInputs& in,
                                             const Ltx2ForwardOptions& options) const {
  const auto& c = config_;
  RETURN_IF_ERROR(CheckShape("hidden_states", in.hidden_states, {-1, -1, c.in_channels}));
  const int64_t batch = in.hidden_states.size(0), nv = in.hidden_states.size(1);
  RETURN_IF_ERROR(
      CheckShape("audio_hidden_states", in.audio_hidden_states, {batch, -1, c.audio_in_channels}));
  const int64_t na = in.audio_hidden_states.size(1);
  const bool caption = c.use_prompt_embeddings;
  RETURN_IF_ERROR(CheckShape("encoder_hidden_states", in.encoder_hidden_states,
                             {batch, -1, caption ? c.caption_channels : c.cross_attention_dim}));
  RETURN_IF_ERROR(
      CheckShape("audio_encoder_hidden_states", in.audio_encoder_hidden_states,
                 {batch, -1, caption ? c.caption_channels : c.audio_cross_attention_dim}));
  RETURN_IF_ERROR(CheckTimestep("timestep", in.timestep, batch, nv));
  if (in.audio_timestep.defined()) {
    RETURN_IF_ERROR(CheckTimestep("audio_timestep", in.audio_timestep, batch, na));
  } else if (in.timestep.numel() != batch) {
    return Invalid("audio_timestep", "required when the video timestep is per token");
  }
  const bool needs_sigma =
      (c.prompt_modulation() && c.use_prompt_adaln_single) || options.use_cross_timestep;
  if (needs_sigma && !in.sigma.defined()) {
    return Invalid("sigma", "required by the prompt modulation or use_cross_timestep");
  }
  if (in.sigma.defined()) RETURN_IF_ERROR(CheckShape("sigma", in.sigma.flatten(), {batch}));
  if (in.audio_sigma.defined()) {
    RETURN_IF_ERROR(CheckShape("audio_sigma", in.audio_sigma.flatten(), {batch}));
  }
  if (in.encoder_attention_mask.defined()) {
    RETURN_IF_ERROR(CheckShape("encoder_attention_mask", in.encoder_attention_mask,
                               {batch, in.encoder_hidden_states.size(1)}));
  }
  if (in.audio_encoder_attention_mask.defined()) {
    RETURN_IF_ERROR(CheckShape("audio_encoder_attention_mask", in.audio_encoder_attention_mask,
                               {batch, in.audio_encoder_hidden_states.size(1)}));
  }
  if (in.video_self_attention_mask.defined()) {
    RETURN_IF_ERROR(
        CheckShape("video_self_attention_mask", in.video_self_attention_mask, {batch, nv, nv}));
  }
  if (in.video_coords.defined()) {
    RETURN_IF_ERROR(CheckCoords("video_coords", in.video_coords, batch, 3, nv));
  } else {
    const int64_t grid = CeilDiv(in.num_frames, c.patch_size_t) * CeilDiv(in.height, c.patch_size) *
                         CeilDiv(in.width, c.patch_size);
    if (in.num_frames <= 0 || in.height <= 0 || in.width <= 0 || grid != nv || !(in.fps > 0)) {
      return Invalid("num_frames/height/width/fps",
                     absl::StrCat(in.num_frames, "x", in.height, "x", in.width, " at fps ", in.fps,
                                  " does not give the ", nv, " video tokens"));
    }
  }
  if (in.audio_coords.defined()) {
    RETURN_IF_ERROR(CheckCoords("audio_coords", in.audio_coords, batch, 1, na));
  } else if (in.audio_num_frames > 0 && CeilDiv(in.audio_num_frames, c.audio_patch_size_t) != na) {
    return Invalid("audio_num_frames",
                   absl::StrCat(in.audio_num_frames, " frames for ", na, " audio tokens"));
  }
  for (int64_t b : options.stg_blocks) {
    if (b < 0 || b >= c.num_layers) {
      return Invalid("stg_blocks", absl::StrCat("block ", b, " of ", c.num_layers));
    }
  }
  if (options.perturbation_mask.defined() && options.perturbation_mask.numel() != batch) {
    return Invalid("perturbation_mask", absl::StrCat("shape ", Shape(options.perturbation_mask),
                                                     ", expected ", batch, " values"));
  }
  return absl::OkStatus();
}

}  // namespace diffmesh::models::ltx2
