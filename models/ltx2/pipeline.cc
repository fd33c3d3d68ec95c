#include "models/ltx2/pipeline.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh::models::ltx2 {
namespace {

// Noise of `shape` drawn on the CPU from `seed` (device independent), float32 on `device`.
at::Tensor SeededNoise(at::IntArrayRef shape, uint64_t seed, const at::Device& device) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat)).to(device);
}

// x0 = x − σ·v, in float32.
at::Tensor ToX0(const at::Tensor& sample, const at::Tensor& velocity, float sigma) {
  return sample - velocity.to(at::kFloat) * sigma;
}

// Unbiased std over every non-batch element, per batch row: [B, 1, ...] (keepdim).
at::Tensor RowStd(const at::Tensor& x) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < x.dim(); ++d) dims.push_back(d);
  return x.std(dims, /*unbiased=*/true, /*keepdim=*/true);
}

// The guidance rescale of `guided` given the cond x0's RowStd (`std_cond`, any shape of B
// elements).
at::Tensor Rescale(double rescale, const at::Tensor& guided, const at::Tensor& std_cond) {
  if (rescale <= 0.0) return guided;
  const at::Tensor std_out = RowStd(guided);
  const at::Tensor ratio = std_cond.reshape(std_out.sizes()) / std_out;
  return rescale * (guided * ratio) + (1.0 - rescale) * guided;
}

// The guided x0 of one stream (see the header); absent branches contribute nothing.
at::Tensor GuideStream(const StreamGuidance& g, const at::Tensor& cond, const at::Tensor* negative,
                       const at::Tensor* perturbed, const at::Tensor* modality) {
  at::Tensor out = cond;
  if (negative != nullptr && g.cfg != 1.0) out = out + (g.cfg - 1.0) * (cond - *negative);
  if (perturbed != nullptr && g.stg != 0.0) out = out + g.stg * (cond - *perturbed);
  if (modality != nullptr && g.modality != 1.0) out = out + (g.modality - 1.0) * (cond - *modality);
  return g.rescale > 0.0 ? Rescale(g.rescale, out, RowStd(cond)) : out;
}

// The PARALLEL weight of a non-cond branch in one stream (0 when its term is off).
double BranchWeight(const StreamGuidance& g, Branch branch) {
  switch (branch) {
    case Branch::kNegative:
      return 1.0 - g.cfg;
    case Branch::kPerturbed:
      return -g.stg;
    case Branch::kModality:
      return 1.0 - g.modality;
    case Branch::kCond:
      break;
  }
  return 0.0;
}

}  // namespace

at::Tensor PackVideoLatents(const at::Tensor& latents, int64_t p, int64_t pt) {
  const int64_t b = latents.size(0), f = latents.size(2), h = latents.size(3), w = latents.size(4);
  return latents.reshape({b, -1, f / pt, pt, h / p, p, w / p, p})
      .permute({0, 2, 4, 6, 1, 3, 5, 7})
      .flatten(4, 7)
      .flatten(1, 3);
}

at::Tensor UnpackVideoLatents(const at::Tensor& tokens, int64_t f, int64_t h, int64_t w, int64_t p,
                              int64_t pt) {
  const int64_t b = tokens.size(0);
  return tokens.reshape({b, f, h, w, -1, pt, p, p})
      .permute({0, 4, 1, 5, 2, 6, 3, 7})
      .flatten(6, 7)
      .flatten(4, 5)
      .flatten(2, 3);
}

const char* BranchName(Branch branch) {
  switch (branch) {
    case Branch::kCond:
      return "cond";
    case Branch::kNegative:
      return "negative";
    case Branch::kPerturbed:
      return "perturbed";
    case Branch::kModality:
      return "modality";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Ltx2Pipeline>> Ltx2Pipeline::Create(
    const Ltx2Networks& networks, const GuidanceOptions& guidance) {
  if (networks.transformer == nullptr) return absl::InvalidArgumentError("no transformer");
  if (networks.video_vae == nullptr || networks.audio_vae == nullptr) {
    return absl::InvalidArgumentError("the video and audio VAEs are required (latent statistics)");
  }
  const auto& vc = networks.video_vae->config();
  if (vc.latent_channels * networks.transformer->config().patch_size_t *
          networks.transformer->config().patch_size * networks.transformer->config().patch_size !=
      networks.transformer->config().in_channels) {
    return absl::InvalidArgumentError(absl::StrCat("vae latent_channels ", vc.latent_channels,
                                                   " do not pack to transformer in_channels ",
                                                   networks.transformer->config().in_channels));
  }
  if (guidance.skip_step < 0) return absl::InvalidArgumentError("skip_step < 0");
  return std::unique_ptr<Ltx2Pipeline>(new Ltx2Pipeline(networks, guidance));
}

absl::StatusOr<Ltx2TextEmbeddings> Ltx2Pipeline::EncodeText(
    const at::Tensor& prompt_hidden_states, const at::Tensor& prompt_mask,
    const at::Tensor& negative_hidden_states, const at::Tensor& negative_mask) const {
  if (networks_.connectors == nullptr) return absl::FailedPreconditionError("no connectors");
  const bool with_negative = negative_hidden_states.defined();
  if (with_negative && (negative_hidden_states.sizes() != prompt_hidden_states.sizes() ||
                        !negative_mask.defined())) {
    return absl::InvalidArgumentError(
        "negative prompt hidden states must match the prompt's shape and come with a mask");
  }
  at::Tensor hidden = with_negative ? at::cat({negative_hidden_states, prompt_hidden_states}, 0)
                                    : prompt_hidden_states;
  at::Tensor mask = with_negative
                        ? at::cat({negative_mask.to(prompt_mask.scalar_type()), prompt_mask}, 0)
                        : prompt_mask;
  TextConnectors::Output out = networks_.connectors->Forward(hidden, mask, PaddingSide::kLeft);
  Ltx2TextEmbeddings text;
  if (with_negative) {
    auto v = out.video_text_embedding.chunk(2, 0);
    auto a = out.audio_text_embedding.chunk(2, 0);
    auto m = out.attention_mask.chunk(2, 0);
    text.negative_video = v[0];
    text.video = v[1];
    text.negative_audio = a[0];
    text.audio = a[1];
    text.negative_mask = m[0];
    text.mask = m[1];
  } else {
    text.video = out.video_text_embedding;
    text.audio = out.audio_text_embedding;
    text.mask = out.attention_mask;
  }
  return text;
}

absl::StatusOr<Ltx2DenoiseState> Ltx2Pipeline::PrepareLatents(const Ltx2LatentInit& init) const {
  const Ltx2TransformerConfig& tc = networks_.transformer->config();
  const VideoVaeConfig& vc = networks_.video_vae->config();
  const AudioVaeConfig& ac = networks_.audio_vae->config();
  const at::Device device = networks_.video_vae->latents_mean().device();
  const int64_t p = tc.patch_size, pt = tc.patch_size_t;
  Ltx2DenoiseState s;
  s.frame_rate = init.frame_rate;

  // Video: raw latents [B, C, F, H, W] → normalised.
  at::Tensor video;
  if (init.video_latents.defined()) {
    if (init.video_latents.dim() != 5 || init.video_latents.size(1) != vc.latent_channels) {
      return absl::InvalidArgumentError(absl::StrCat("video_latents must be [B, ",
                                                     vc.latent_channels, ", F, H, W], got ",
                                                     init.video_latents.dim(), " dims"));
    }
    video = networks_.video_vae->NormalizeLatents(init.video_latents.to(device, at::kFloat));
  } else {
    if (init.height % vc.spatial_compression_ratio != 0 ||
        init.width % vc.spatial_compression_ratio != 0 || init.num_frames < 1) {
      return absl::InvalidArgumentError(absl::StrCat("height/width must be multiples of ",
                                                     vc.spatial_compression_ratio, ", got ",
                                                     init.height, "x", init.width));
    }
    const int64_t f = (init.num_frames - 1) / vc.temporal_compression_ratio + 1;
    video = SeededNoise(
        {init.batch_size, vc.latent_channels, f, init.height / vc.spatial_compression_ratio,
         init.width / vc.spatial_compression_ratio},
        init.seed, device);
  }
  const int64_t batch = video.size(0);
  if (video.size(2) % pt != 0 || video.size(3) % p != 0 || video.size(4) % p != 0) {
    return absl::InvalidArgumentError("latent grid not divisible by the transformer's patch size");
  }
  s.latent_frames = video.size(2) / pt;
  s.latent_height = video.size(3) / p;
  s.latent_width = video.size(4) / p;

  // Image conditioning: frame 0 replaced by the normalised given latent, mask 1 there.
  at::Tensor frame_mask;  // [B, 1, F, H, W]
  if (init.first_frame_latent.defined()) {
    const at::Tensor& ff = init.first_frame_latent;
    if (ff.dim() != 5 || ff.size(0) != batch || ff.size(1) != video.size(1) || ff.size(2) != 1 ||
        ff.size(3) != video.size(3) || ff.size(4) != video.size(4)) {
      return absl::InvalidArgumentError(absl::StrCat("first_frame_latent must be [", batch, ", ",
                                                     video.size(1), ", 1, ", video.size(3), ", ",
                                                     video.size(4), "]"));
    }
    if (pt != 1) return absl::UnimplementedError("image conditioning with patch_size_t > 1");
    video = video.clone();
    video.narrow(2, 0, 1).copy_(networks_.video_vae->NormalizeLatents(ff.to(device, at::kFloat)));
    frame_mask =
        at::zeros({batch, 1, video.size(2), video.size(3), video.size(4)}, video.options());
    frame_mask.narrow(2, 0, 1).fill_(1.0);
  }
  if (init.noise_scale != 0.0 && init.video_latents.defined()) {
    const at::Tensor noise = SeededNoise(video.sizes(), init.seed, device);
    const at::Tensor scale = frame_mask.defined() ? init.noise_scale * (1.0 - frame_mask)
                                                  : at::full({}, init.noise_scale, video.options());
    video = scale * noise + (1.0 - scale) * video;
  }
  s.video = PackVideoLatents(video, p, pt).contiguous();
  if (frame_mask.defined()) s.conditioning_mask = PackVideoLatents(frame_mask, p, pt).squeeze(-1);

  // Audio: raw [B, C, L, M'] → packed [B, L, C·M'] → normalised.
  const int64_t mel_bins = ac.mel_bins.value_or(64);
  s.latent_mel_bins = mel_bins / AudioVaeConfig::kCompression;
  at::Tensor audio;
  if (init.audio_latents.defined()) {
    if (init.audio_latents.dim() != 4 || init.audio_latents.size(0) != batch ||
        init.audio_latents.size(1) != ac.latent_channels) {
      return absl::InvalidArgumentError(
          absl::StrCat("audio_latents must be [", batch, ", ", ac.latent_channels, ", L, M']"));
    }
    s.latent_mel_bins = init.audio_latents.size(3);
    audio = networks_.audio_vae->NormalizePacked(
        PackAudioLatents(init.audio_latents.to(device, at::kFloat)));
    if (init.noise_scale != 0.0) {
      const at::Tensor noise = SeededNoise(audio.sizes(), init.seed + 1, device);
      audio = init.noise_scale * noise + (1.0 - init.noise_scale) * audio;
    }
  } else {
    int64_t length = init.audio_num_frames;
    if (length <= 0) {
      const int64_t pixel_frames = init.video_latents.defined()
                                       ? (video.size(2) - 1) * vc.temporal_compression_ratio + 1
                                       : init.num_frames;
      length = static_cast<int64_t>(
          std::nearbyint(pixel_frames / init.frame_rate * ac.LatentsPerSecond()));
    }
    audio = PackAudioLatents(
        SeededNoise({batch, ac.latent_channels, length, s.latent_mel_bins}, init.seed + 1, device));
  }
  if (audio.size(2) != tc.audio_in_channels) {
    return absl::InvalidArgumentError(absl::StrCat("audio tokens have ", audio.size(2),
                                                   " features, the transformer takes ",
                                                   tc.audio_in_channels));
  }
  s.audio = audio.contiguous();
  s.audio_frames = audio.size(1);

  // Schedule (the audio scheduler is a copy with the same sigmas).
  ASSIGN_OR_RETURN(auto scheduler, FlowMatchEulerScheduler::Create(networks_.scheduler));
  const int64_t video_tokens = s.video.size(1);
  if (init.sigmas.empty()) {
    RETURN_IF_ERROR(scheduler->SetPipelineSchedule(init.num_inference_steps, video_tokens));
  } else {
    RETURN_IF_ERROR(
        scheduler->SetSigmas(init.sigmas, CalculateShift(video_tokens, networks_.scheduler)));
  }
  s.sigmas = scheduler->sigmas();
  s.timesteps = scheduler->timesteps();

  s.video_coords =
      PrepareVideoCoords(batch, s.latent_frames, s.latent_height, s.latent_width, init.frame_rate,
                         networks_.transformer->VideoCoords(), device);
  s.audio_coords =
      PrepareAudioCoords(batch, s.audio_frames, networks_.transformer->AudioCoords(), device);
  return s;
}

bool UsesNegativePrompt(const GuidanceOptions& g) {
  if (g.reference_branch_gating) return g.video.cfg > 1.0 || g.audio.cfg > 1.0;
  return g.video.cfg != 1.0 || g.audio.cfg != 1.0;
}

std::vector<Branch> Ltx2Pipeline::LiveBranches(const Ltx2DenoiseState& state) const {
  const GuidanceOptions& g = guidance_;
  if (g.skip_step > 0 && state.step % (g.skip_step + 1) != 0 && state.last_video_x0.defined()) {
    return {};
  }
  std::vector<Branch> branches = {Branch::kCond};
  if (g.reference_branch_gating) {
    if (UsesNegativePrompt(g)) branches.push_back(Branch::kNegative);
    if (g.video.stg > 0.0 || g.audio.stg > 0.0) branches.push_back(Branch::kPerturbed);
    if (g.video.modality > 1.0 || g.audio.modality > 1.0) branches.push_back(Branch::kModality);
    return branches;
  }
  if (UsesNegativePrompt(g)) branches.push_back(Branch::kNegative);
  if ((g.video.stg != 0.0 || g.audio.stg != 0.0) && !g.stg_blocks.empty()) {
    branches.push_back(Branch::kPerturbed);
  }
  if (g.video.modality != 1.0 || g.audio.modality != 1.0) branches.push_back(Branch::kModality);
  return branches;
}

absl::StatusOr<BranchCall> Ltx2Pipeline::MakeBranchCall(const Ltx2DenoiseState& state,
                                                        Branch branch,
                                                        const Ltx2TextEmbeddings& text) const {
  if (state.done()) return absl::FailedPreconditionError("all steps have run");
  const bool negative = branch == Branch::kNegative;
  if (negative && !text.negative_video.defined()) {
    return absl::InvalidArgumentError("the negative branch needs negative prompt embeddings");
  }
  const int64_t batch = state.video.size(0);
  const at::TensorOptions f32 = state.video.options().dtype(at::kFloat);
  BranchCall call;
  Ltx2TransformerInputs& in = call.inputs;
  in.hidden_states = state.video;
  in.audio_hidden_states = state.audio;
  in.encoder_hidden_states = negative ? text.negative_video : text.video;
  in.audio_encoder_hidden_states = negative ? text.negative_audio : text.audio;
  in.encoder_attention_mask = negative ? text.negative_mask : text.mask;
  in.audio_encoder_attention_mask = in.encoder_attention_mask;
  const at::Tensor t = at::full({batch}, state.timesteps[state.step], f32);
  in.sigma = t;
  if (state.conditioning_mask.defined()) {
    in.timestep = t.unsqueeze(-1) * (1.0 - state.conditioning_mask);  // [B, Nv]
    in.audio_timestep = t;
  } else {
    in.timestep = t;
  }
  in.video_coords = state.video_coords;
  in.audio_coords = state.audio_coords;
  in.num_frames = state.latent_frames;
  in.height = state.latent_height;
  in.width = state.latent_width;
  in.fps = state.frame_rate;
  in.audio_num_frames = state.audio_frames;
  call.options.use_cross_timestep = guidance_.use_cross_timestep;
  call.options.lora = networks_.transformer_lora;
  call.options.lora_strength = networks_.transformer_lora_strength;
  if (branch == Branch::kPerturbed) call.options.stg_blocks = guidance_.stg_blocks;
  if (branch == Branch::kModality) call.options.isolate_modalities = true;
  return call;
}

absl::StatusOr<BranchPrediction> Ltx2Pipeline::RunBranch(const Ltx2DenoiseState& state,
                                                         Branch branch,
                                                         const Ltx2TextEmbeddings& text) const {
  ASSIGN_OR_RETURN(BranchCall call, MakeBranchCall(state, branch, text));
  ASSIGN_OR_RETURN(Ltx2TransformerOutputs out,
                   networks_.transformer->Forward(call.inputs, call.options));
  return BranchPrediction{out.video.to(at::kFloat), out.audio.to(at::kFloat)};
}

absl::StatusOr<std::map<Branch, BranchPrediction>> Ltx2Pipeline::RunLiveBranches(
    const Ltx2DenoiseState& state, const Ltx2TextEmbeddings& text) const {
  return RunBranches(state, LiveBranches(state), text);
}

absl::StatusOr<std::map<Branch, BranchPrediction>> Ltx2Pipeline::RunBranches(
    const Ltx2DenoiseState& state, const std::vector<Branch>& branches,
    const Ltx2TextEmbeddings& text) const {
  std::map<Branch, BranchPrediction> preds;
  auto has = [&](Branch b) {
    return std::find(branches.begin(), branches.end(), b) != branches.end();
  };
  // Prompts of different lengths (the encoder stage sends valid tokens only) cannot share a batch.
  const bool batched_cfg = has(Branch::kCond) && has(Branch::kNegative) &&
                           text.negative_video.defined() &&
                           text.negative_video.size(1) == text.video.size(1);
  for (Branch branch : branches) {
    if (branch == Branch::kNegative && batched_cfg) continue;
    if (branch == Branch::kCond && batched_cfg) {
      // One call of batch 2B, rows [negative, positive], as diffusers batches CFG.
      ASSIGN_OR_RETURN(BranchCall neg, MakeBranchCall(state, Branch::kNegative, text));
      ASSIGN_OR_RETURN(BranchCall pos, MakeBranchCall(state, Branch::kCond, text));
      Ltx2TransformerInputs in = pos.inputs;
      auto cat = [](const at::Tensor& a, const at::Tensor& b) { return at::cat({a, b}, 0); };
      in.hidden_states = cat(neg.inputs.hidden_states, pos.inputs.hidden_states);
      in.audio_hidden_states = cat(neg.inputs.audio_hidden_states, pos.inputs.audio_hidden_states);
      in.encoder_hidden_states =
          cat(neg.inputs.encoder_hidden_states, pos.inputs.encoder_hidden_states);
      in.audio_encoder_hidden_states =
          cat(neg.inputs.audio_encoder_hidden_states, pos.inputs.audio_encoder_hidden_states);
      in.encoder_attention_mask =
          cat(neg.inputs.encoder_attention_mask, pos.inputs.encoder_attention_mask);
      in.audio_encoder_attention_mask = in.encoder_attention_mask;
      in.timestep = cat(neg.inputs.timestep, pos.inputs.timestep);
      if (pos.inputs.audio_timestep.defined()) {
        in.audio_timestep = cat(neg.inputs.audio_timestep, pos.inputs.audio_timestep);
      }
      in.sigma = cat(neg.inputs.sigma, pos.inputs.sigma);
      in.video_coords = cat(neg.inputs.video_coords, pos.inputs.video_coords);
      in.audio_coords = cat(neg.inputs.audio_coords, pos.inputs.audio_coords);
      ASSIGN_OR_RETURN(Ltx2TransformerOutputs out, networks_.transformer->Forward(in, pos.options));
      auto v = out.video.to(at::kFloat).chunk(2, 0);
      auto a = out.audio.to(at::kFloat).chunk(2, 0);
      preds[Branch::kNegative] = BranchPrediction{v[0], a[0]};
      preds[Branch::kCond] = BranchPrediction{v[1], a[1]};
      continue;
    }
    ASSIGN_OR_RETURN(preds[branch], RunBranch(state, branch, text));
  }
  return preds;
}

absl::StatusOr<Ltx2Pipeline::Guided> Ltx2Pipeline::Combine(
    const Ltx2DenoiseState& state, const std::map<Branch, BranchPrediction>& predictions) const {
  if (state.done()) return absl::FailedPreconditionError("all steps have run");
  const std::vector<Branch> live = LiveBranches(state);
  if (live.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("step ", state.step, " is skipped (skip_step): nothing to combine"));
  }
  const float sigma = state.sigmas[state.step];
  std::map<Branch, std::pair<at::Tensor, at::Tensor>> x0;
  for (Branch branch : live) {
    auto it = predictions.find(branch);
    if (it == predictions.end()) {
      return absl::InvalidArgumentError(absl::StrCat("no prediction of the live branch ",
                                                     BranchName(branch), " at step ", state.step));
    }
    x0[branch] = {ToX0(state.video, it->second.video, sigma),
                  ToX0(state.audio, it->second.audio, sigma)};
  }
  auto ptr = [&](Branch b, bool video) -> const at::Tensor* {
    auto it = x0.find(b);
    if (it == x0.end()) return nullptr;
    return video ? &it->second.first : &it->second.second;
  };
  Guided g;
  g.video_x0 = GuideStream(guidance_.video, x0[Branch::kCond].first, ptr(Branch::kNegative, true),
                           ptr(Branch::kPerturbed, true), ptr(Branch::kModality, true));
  g.audio_x0 = GuideStream(guidance_.audio, x0[Branch::kCond].second, ptr(Branch::kNegative, false),
                           ptr(Branch::kPerturbed, false), ptr(Branch::kModality, false));
  return g;
}

absl::Status Ltx2Pipeline::Step(Ltx2DenoiseState& state,
                                const std::map<Branch, BranchPrediction>& predictions,
                                at::Tensor* guided_video_velocity,
                                at::Tensor* guided_audio_velocity) const {
  if (state.done()) return absl::FailedPreconditionError("all steps have run");
  Guided g;
  if (!LiveBranches(state).empty()) {
    ASSIGN_OR_RETURN(g, Combine(state, predictions));
  }
  return StepGuided(state, g, guided_video_velocity, guided_audio_velocity);
}

std::map<Branch, Ltx2Pipeline::StreamWeights> Ltx2Pipeline::GuidanceWeights(
    const Ltx2DenoiseState& state) const {
  std::map<Branch, StreamWeights> weights;
  const std::vector<Branch> live = LiveBranches(state);
  if (live.empty()) return weights;
  StreamWeights cond{1.0, 1.0};
  for (Branch b : live) {
    if (b == Branch::kCond) continue;
    const StreamWeights w{BranchWeight(guidance_.video, b), BranchWeight(guidance_.audio, b)};
    weights[b] = w;
    cond.video -= w.video;
    cond.audio -= w.audio;
  }
  weights[Branch::kCond] = cond;
  return weights;
}

absl::StatusOr<Ltx2Pipeline::Guided> Ltx2Pipeline::PartialGuidance(
    const Ltx2DenoiseState& state, const std::map<Branch, BranchPrediction>& predictions) const {
  if (state.done()) return absl::FailedPreconditionError("all steps have run");
  const std::map<Branch, StreamWeights> weights = GuidanceWeights(state);
  if (weights.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("step ", state.step, " is skipped (skip_step): nothing to combine"));
  }
  const float sigma = state.sigmas[state.step];
  Guided sum{at::zeros_like(state.video, state.video.options().dtype(at::kFloat)),
             at::zeros_like(state.audio, state.audio.options().dtype(at::kFloat))};
  for (const auto& [branch, pred] : predictions) {
    auto w = weights.find(branch);
    if (w == weights.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the branch ", BranchName(branch), " is not live at step ", state.step));
    }
    sum.video_x0.add_(ToX0(state.video, pred.video, sigma), w->second.video);
    sum.audio_x0.add_(ToX0(state.audio, pred.audio, sigma), w->second.audio);
  }
  return sum;
}

Ltx2Pipeline::Guided Ltx2Pipeline::CondStd(const Ltx2DenoiseState& state,
                                           const BranchPrediction& cond) const {
  const float sigma = state.sigmas[state.step];
  return Guided{RowStd(ToX0(state.video, cond.video, sigma)).flatten(),
                RowStd(ToX0(state.audio, cond.audio, sigma)).flatten()};
}

absl::StatusOr<Ltx2Pipeline::Guided> Ltx2Pipeline::FinishGuidance(const Guided& sum,
                                                                  const Guided& cond_std) const {
  Guided g = sum;
  for (auto [rescale, x0, row_std, name] :
       {std::tuple{guidance_.video.rescale, &g.video_x0, &cond_std.video_x0, "video"},
        std::tuple{guidance_.audio.rescale, &g.audio_x0, &cond_std.audio_x0, "audio"}}) {
    if (rescale <= 0.0) continue;
    if (!row_std->defined() || row_std->numel() != x0->size(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", name, " rescale needs the cond branch's std per batch row (",
                       x0->size(0), " values)"));
    }
    *x0 = Rescale(rescale, *x0, *row_std);
  }
  return g;
}

absl::Status Ltx2Pipeline::StepGuided(Ltx2DenoiseState& state, const Guided& guided,
                                      at::Tensor* guided_video_velocity,
                                      at::Tensor* guided_audio_velocity) const {
  if (state.done()) return absl::FailedPreconditionError("all steps have run");
  Guided g = guided;
  if (LiveBranches(state).empty()) {
    if (g.video_x0.defined() || g.audio_x0.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("step ", state.step, " is skipped (skip_step): it takes no guided x0"));
    }
    g = Guided{state.last_video_x0, state.last_audio_x0};
  } else {
    if (!g.video_x0.defined() || !g.audio_x0.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("step ", state.step, " needs the guided x0 of both streams"));
    }
    state.last_video_x0 = g.video_x0;
    state.last_audio_x0 = g.audio_x0;
  }
  const float sigma = state.sigmas[state.step];
  const float dt = state.sigmas[state.step + 1] - sigma;
  const at::Tensor video_v = (state.video - g.video_x0) / sigma;
  const at::Tensor audio_v = (state.audio - g.audio_x0) / sigma;
  at::Tensor video = state.video + dt * video_v;
  if (state.conditioning_mask.defined()) {
    video = at::where(state.conditioning_mask.unsqueeze(-1) > 0.5, state.video, video);
  }
  state.video = video;
  state.audio = state.audio + dt * audio_v;
  if (guided_video_velocity != nullptr) *guided_video_velocity = video_v;
  if (guided_audio_velocity != nullptr) *guided_audio_velocity = audio_v;
  ++state.step;
  return absl::OkStatus();
}

absl::Status Ltx2Pipeline::Denoise(Ltx2DenoiseState& state, const Ltx2TextEmbeddings& text) const {
  while (!state.done()) {
    ASSIGN_OR_RETURN(auto preds, RunLiveBranches(state, text));
    RETURN_IF_ERROR(Step(state, preds));
  }
  return absl::OkStatus();
}

absl::StatusOr<Ltx2Output> Ltx2Pipeline::Decode(const Ltx2DenoiseState& state,
                                                const Ltx2DecodeOptions& options) const {
  const Ltx2TransformerConfig& tc = networks_.transformer->config();
  Ltx2Output out;
  // [B, C, F, H, W] normalised, then denormalised.
  at::Tensor video = UnpackVideoLatents(state.video, state.latent_frames, state.latent_height,
                                        state.latent_width, tc.patch_size, tc.patch_size_t);
  if (networks_.video_vae->config().timestep_conditioning) {
    const double ns = options.decode_noise_scale.value_or(options.decode_timestep);
    const at::Tensor noise = SeededNoise(video.sizes(), options.noise_seed, video.device());
    video = (1.0 - ns) * video + ns * noise;
  }
  out.video_latents = networks_.video_vae->DenormalizeLatents(video);
  out.audio_latents = UnpackAudioLatents(networks_.audio_vae->DenormalizePacked(state.audio),
                                         state.latent_mel_bins);
  RETURN_IF_ERROR(DecodeLatents(networks_, options, out));
  return out;
}

VideoVaeTiling Ltx2DecodeOptions::OutOfMemoryTiling() {
  VideoVaeTiling t;  // the reference's tile sizes
  t.spatial = true;
  t.temporal = true;
  t.align_temporal_tiles = true;
  return t;
}

at::Tensor DecodeWithTilingFallback(const std::function<at::Tensor(const VideoVaeTiling*)>& decode,
                                    const std::optional<VideoVaeTiling>& fallback, bool* tiled) {
  *tiled = false;
  try {
    return decode(nullptr);
  } catch (const c10::OutOfMemoryError&) {
    if (!fallback.has_value()) throw;
  }
  *tiled = true;
  return decode(&*fallback);
}

absl::Status DecodeLatents(const Ltx2Networks& networks, const Ltx2DecodeOptions& options,
                           Ltx2Output& out) {
  if (options.decode_video) {
    if (networks.video_vae == nullptr) return absl::FailedPreconditionError("no video VAE");
    std::optional<at::Tensor> decode_t;
    if (networks.video_vae->config().timestep_conditioning) {
      decode_t = at::full({out.video_latents.size(0)}, options.decode_timestep,
                          out.video_latents.options());
    }
    const Ltx2VideoDecoder& vae = *networks.video_vae;
    out.video = DecodeWithTilingFallback(
        [&](const VideoVaeTiling* tiling) {
          return tiling == nullptr ? vae.Decode(out.video_latents, decode_t)
                                   : vae.Decode(out.video_latents, decode_t, std::nullopt, *tiling);
        },
        options.out_of_memory_tiling, &out.video_decoded_in_tiles);
    out.frames = VideoToUnitFrames(out.video).to(at::kFloat);
    out.frames_uint8 = VideoToUint8Frames(out.video);
  }
  if (options.decode_audio) {
    if (networks.audio_vae == nullptr || networks.vocoder == nullptr) {
      return absl::FailedPreconditionError("no audio VAE and vocoder");
    }
    out.mel = networks.audio_vae->Decode(out.audio_latents);
    out.waveform = networks.vocoder->Run(out.mel);
    out.sample_rate = networks.vocoder->sample_rate();
  }
  return absl::OkStatus();
}

}  // namespace diffmesh::models::ltx2
