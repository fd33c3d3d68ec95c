// The LTX-2 audio-video denoising pipeline as model code, independent of serving: diffusers'
// `LTX2Pipeline.__call__` (pipelines/ltx2/pipeline_ltx2.py at 58eb52c) and the image-to-video
// conditioning of `LTX2ImageToVideoPipeline` (pipeline_ltx2_image2video.py), split so that a
// serving layer can drive it piece by piece:
//
//   text   = pipeline.EncodeText(...)                 // connectors on [negative, positive]
//   state  = pipeline.PrepareLatents(init, text)      // normalise + pack, schedule, coords
//   while (!state.done()):
//     for branch in pipeline.LiveBranches(state):     // cond / negative / perturbed / modality
//       preds[branch] = pipeline.RunBranch(state, branch, text)   // or the caller's own call,
//                                                                  // from BranchCall(...)
//     pipeline.Step(state, preds)                     // guidance in x0 space + Euler, per stream
//   out    = pipeline.Decode(state)                   // video VAE → frames, audio VAE → vocoder
//
// Guidance per stream (video with GuidanceScales.video, audio with .audio), step k, latents x,
// σ = scheduler.sigmas[k], branch velocities v → x0(v) = x − σ·v:
//   g = c + (cfg−1)(c−n) + stg·(c−p) + (mod−1)(c−m)      (c cond, n negative, p perturbed,
//                                                         m modality-isolated)
//   rescale > 0: g = rescale·g·std(c)/std(g) + (1−rescale)·g   (unbiased std per batch row)
//   v_guided = (x − g)/σ;  x ← x + (σ_{k+1} − σ)·v_guided
// A branch whose term is zero for both streams is not run (cfg == 1, stg == 0 or no STG blocks,
// mod == 1). diffusers gates differently — negative only when a cfg scale is > 1, perturbed when
// an stg scale is > 0, modality when a modality scale is > 1 — so it drops, e.g., cfg 0.5;
// GuidanceOptions::reference_branch_gating selects its rule.
// Skip-step guidance (Lightricks' MultiModalGuider): with skip_step = s > 0, only steps with
// k % (s+1) == 0 run the transformer; the others reuse the previous step's guided x0.
//
// Branches spread over ranks (CFG parallelism) use the PARALLEL form of the same guidance: per
// live branch b and stream a weight w_b (GuidanceWeights) with Σ_b w_b·x0_b equal to g before
// the rescale. A rank runs its share of LiveBranches with RunBranches, forms its partial sum with
// PartialGuidance, the partial sums are all-reduced, FinishGuidance applies the rescale (it needs
// the cond branch's per-row std, CondStd, from the rank that ran cond) and StepGuided advances:
//   live = LiveBranches(state)                         // empty on a skipped step
//   preds = RunBranches(state, my share of live, text)
//   sum  = all_reduce(PartialGuidance(state, preds))   // + CondStd on the cond rank, 0 elsewhere
//   StepGuided(state, FinishGuidance(sum, cond_std))   // StepGuided(state, {}) when skipped
//
// Image-to-video: the first latent frame is replaced by a given latent (the video VAE's encoding
// of the image, models/ltx2/video_vae_encoder.h EncodeConditioningImage), its tokens
// get timestep 0 (per-token timestep t·(1 − mask)) and are held exactly after every step.
//
// All latents are float32 on the transformer's device; the transformer computes in its dtype.
#ifndef DIFFMESH_MODELS_LTX2_PIPELINE_H_
#define DIFFMESH_MODELS_LTX2_PIPELINE_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/ltx2/audio_vae.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/scheduler.h"
#include "models/ltx2/transformer.h"
#include "models/ltx2/video_vae.h"
#include "models/ltx2/vocoder.h"

namespace diffmesh::models::ltx2 {

// diffusers `_pack_latents`: [B, C, F, H, W] → [B, F/pt·H/p·W/p, C·pt·p·p] (token order f, h, w).
at::Tensor PackVideoLatents(const at::Tensor& latents, int64_t patch_size = 1,
                            int64_t patch_size_t = 1);
// `_unpack_latents`: the inverse; F, H, W are the packed grid (latent frames / patch_size_t...).
at::Tensor UnpackVideoLatents(const at::Tensor& tokens, int64_t num_frames, int64_t height,
                              int64_t width, int64_t patch_size = 1, int64_t patch_size_t = 1);

// The guidance scales of one stream.
struct StreamGuidance {
  double cfg = 1.0;       // classifier-free guidance (negative prompt); 1 = off
  double stg = 0.0;       // spatio-temporal guidance (perturbed self-attention); 0 = off
  double modality = 1.0;  // modality isolation (no audio↔video attention); 1 = off
  double rescale = 0.0;   // guidance rescale; 0 = off
};

struct GuidanceOptions {
  StreamGuidance video;
  StreamGuidance audio;
  // Blocks whose self-attention the perturbed branch replaces (both streams, as diffusers does).
  std::vector<int64_t> stg_blocks;
  // Modulate cross-modal attention with the other stream's sigma (the pipeline default).
  bool use_cross_timestep = true;
  // Run the transformer only on steps k with k % (skip_step + 1) == 0; 0 = every step.
  int64_t skip_step = 0;
  // true: branches are live exactly when diffusers' LTX2Pipeline runs them (cfg > 1, stg > 0,
  // modality > 1 for either stream); false: whenever their term is nonzero.
  bool reference_branch_gating = false;
};

// Whether the guidance runs the negative-prompt branch (on the steps the transformer runs):
// what LiveBranches decides for Branch::kNegative. A stage that encodes prompts needs the
// negative one only then.
bool UsesNegativePrompt(const GuidanceOptions& g);

enum class Branch {
  kCond = 0,       // positive prompt
  kNegative = 1,   // negative prompt
  kPerturbed = 2,  // positive prompt, STG blocks' self-attention replaced by its values
  kModality = 3,   // positive prompt, audio↔video cross-attention off
};
const char* BranchName(Branch branch);

// Connector outputs for both prompts (negative undefined when no negative prompt was given).
struct Ltx2TextEmbeddings {
  at::Tensor video;           // [B, T, video text width] positive prompt
  at::Tensor audio;           // [B, T, audio text width]
  at::Tensor mask;            // int64 [B, T]
  at::Tensor negative_video;  // negative prompt, same shapes
  at::Tensor negative_audio;
  at::Tensor negative_mask;
};

// What the denoising starts from. Either given latents or seeded noise.
struct Ltx2LatentInit {
  // Raw (VAE-space, not normalised) latents: video [B, C, F, H, W], audio [B, C_a, L, M'].
  // When undefined, standard normal noise of the sizes below is drawn from `seed`.
  at::Tensor video_latents;
  at::Tensor audio_latents;
  int64_t batch_size = 1;
  int64_t num_frames = 121;  // pixel frames (8k+1); latent F = (n−1)/r_t + 1
  int64_t height = 512;      // pixels, multiples of the VAE's spatial ratio
  int64_t width = 768;
  double frame_rate = 24.0;
  // Audio latent length when no audio latents are given; 0 = round(n / frame_rate · latents per
  // second) with n = num_frames, or (F − 1)·r_t + 1 when video latents are given.
  int64_t audio_num_frames = 0;
  uint64_t seed = 0;
  // Given latents become noise_scale·noise + (1 − noise_scale)·latents (conditioned frame kept);
  // video noise is drawn from `seed`, audio noise from `seed + 1`.
  double noise_scale = 0.0;
  // Image-to-video: raw first-frame latent [B, C, 1, H, W] (the video VAE encoding of the image,
  // EncodeConditioningImage). Undefined = text-to-video.
  at::Tensor first_frame_latent;
  int64_t num_inference_steps = 30;
  // Explicit sigmas (N values, terminal 0 appended by the scheduler); empty = linspace(1, 1/N, N)
  // shifted by the video token count, as LTX2Pipeline does.
  std::vector<double> sigmas;
};

// The state of one generation between steps. Owned by the caller; every field is readable.
struct Ltx2DenoiseState {
  at::Tensor video;  // float32 [B, Nv, C·pt·p²] normalised packed latents
  at::Tensor audio;  // float32 [B, Na, C_a·M'] normalised packed latents
  int64_t latent_frames = 0, latent_height = 0, latent_width = 0;  // packed video grid
  int64_t audio_frames = 0;                                        // Na
  int64_t latent_mel_bins = 0;                                     // M'
  double frame_rate = 24.0;
  at::Tensor video_coords;  // [B, 3, Nv, 2] RoPE bounds
  at::Tensor audio_coords;  // [B, 1, Na, 2]
  // Image-to-video: float32 [B, Nv], 1 on conditioned tokens; undefined for text-to-video.
  at::Tensor conditioning_mask;
  std::vector<float> sigmas;     // N + 1
  std::vector<float> timesteps;  // N
  int64_t step = 0;              // next step to run
  // Guided x0 of the last step that ran the transformer (skip-step guidance reuses them).
  at::Tensor last_video_x0, last_audio_x0;

  int64_t num_steps() const { return static_cast<int64_t>(timesteps.size()); }
  bool done() const { return step >= num_steps(); }
};

// Velocities of one branch (float32).
struct BranchPrediction {
  at::Tensor video;  // [B, Nv, C]
  at::Tensor audio;  // [B, Na, C_a]
};

// One transformer call as the pipeline would make it, for callers that run it themselves.
struct BranchCall {
  Ltx2TransformerInputs inputs;
  Ltx2ForwardOptions options;
};

struct Ltx2DecodeOptions {
  bool decode_video = true;
  bool decode_audio = true;
  // VAEs with timestep_conditioning: decode timestep and noise scale (diffusers
  // decode_timestep / decode_noise_scale, noise from `noise_seed`). Ignored otherwise.
  double decode_timestep = 0.0;
  std::optional<double> decode_noise_scale;  // nullopt = decode_timestep
  uint64_t noise_seed = 0;
  // When the video decode with the VAE's own tiling runs out of memory, it runs again in these
  // tiles (nullopt: the error stands). The default: the reference's tile sizes (512 px every
  // 448 px, 16 frames every 8), spatial and temporal, temporal tiles aligned to their frames —
  // on one GPU shared with the text encoder a release-size clip's untiled decode does not fit.
  std::optional<VideoVaeTiling> out_of_memory_tiling = OutOfMemoryTiling();

  static VideoVaeTiling OutOfMemoryTiling();
};

struct Ltx2Output {
  at::Tensor video_latents;  // float32 [B, C, F, H, W] denormalised (what the VAE decodes)
  at::Tensor audio_latents;  // float32 [B, C_a, L, M'] denormalised
  at::Tensor video;          // [B, 3, F', H', W'] decoder output in about [-1, 1]
  at::Tensor frames;         // float32 [B, F', 3, H', W'] in [0, 1] (diffusers output_type "pt")
  at::Tensor frames_uint8;   // uint8 [B, F', H', W', 3]
  at::Tensor mel;            // [B, 2, 4L−3, mel_bins]
  at::Tensor waveform;       // float32 [B, channels, samples]
  int64_t sample_rate = 0;
  bool video_decoded_in_tiles = false;  // after running out of memory untiled (see above)
};

// The networks a pipeline runs; not owned (they outlive the pipeline). Any but the transformer
// may be null when the matching step is not used (no text encoding, no decode).
struct Ltx2Networks {
  const Ltx2Transformer* transformer = nullptr;
  const TextConnectors* connectors = nullptr;
  const Ltx2VideoDecoder* video_vae = nullptr;
  const AudioVaeDecoder* audio_vae = nullptr;
  const Vocoder* vocoder = nullptr;
  SchedulerConfig scheduler;
  // A LoRA adapter every transformer call applies (Ltx2ForwardOptions::lora), at this strength;
  // null: the plain weights (e.g. stage 2 of the two-stage pipeline runs the distilled LoRA).
  const Ltx2Lora* transformer_lora = nullptr;
  double transformer_lora_strength = 1.0;
};

// Decodes denormalised latents (Ltx2Output::video_latents / audio_latents, what a LATENTS output
// or a stage graph's "decode" stage carries): the video VAE (at options.decode_timestep where
// it is timestep-conditioned; the decode noise was mixed in before denormalising, by
// Ltx2Pipeline::Decode) when options.decode_video, the audio VAE and vocoder when
// options.decode_audio. Fills everything but the latents in the result. Only the decoders of
// `networks` are used; those not asked for may be null.
absl::Status DecodeLatents(const Ltx2Networks& networks, const Ltx2DecodeOptions& options,
                           Ltx2Output& out);

// The out-of-memory policy of DecodeLatents: returns decode(nullptr) (the decoder's own tiling);
// when that raises c10::OutOfMemoryError (the CUDA caching allocator raises it after releasing
// its cached blocks; what the failed attempt held is freed as the error unwinds) and `fallback`
// is set, returns decode(&*fallback) and sets *tiled. Other errors, and an out-of-memory error
// without a fallback or from the retry, propagate.
at::Tensor DecodeWithTilingFallback(const std::function<at::Tensor(const VideoVaeTiling*)>& decode,
                                    const std::optional<VideoVaeTiling>& fallback, bool* tiled);

class Ltx2Pipeline {
 public:
  // The VAE statistics are needed for latent preparation: video_vae and audio_vae must be set.
  static absl::StatusOr<std::unique_ptr<Ltx2Pipeline>> Create(const Ltx2Networks& networks,
                                                              const GuidanceOptions& guidance);

  // Connectors on the text encoder's stacked hidden states [B, T, caption·layers] with masks
  // [B, T] (left padding). With a negative prompt both go through one connector call, batch
  // [negative, positive], as diffusers does.
  absl::StatusOr<Ltx2TextEmbeddings> EncodeText(const at::Tensor& prompt_hidden_states,
                                                const at::Tensor& prompt_mask,
                                                const at::Tensor& negative_hidden_states = {},
                                                const at::Tensor& negative_mask = {}) const;

  // Normalises and packs (or draws) the latents, applies image conditioning, sets the schedule
  // and the RoPE coordinates.
  absl::StatusOr<Ltx2DenoiseState> PrepareLatents(const Ltx2LatentInit& init) const;

  // The branches step state.step needs, cond first; empty on a skipped step.
  std::vector<Branch> LiveBranches(const Ltx2DenoiseState& state) const;

  // The transformer call of `branch` at state.step (batch B).
  absl::StatusOr<BranchCall> MakeBranchCall(const Ltx2DenoiseState& state, Branch branch,
                                            const Ltx2TextEmbeddings& text) const;
  absl::StatusOr<BranchPrediction> RunBranch(const Ltx2DenoiseState& state, Branch branch,
                                             const Ltx2TextEmbeddings& text) const;
  // `branches` (any of the live ones at state.step, in any order) on this rank; when both cond
  // and negative are among them and their prompts have one length they share one call of batch
  // 2B ([negative, positive]).
  absl::StatusOr<std::map<Branch, BranchPrediction>> RunBranches(
      const Ltx2DenoiseState& state, const std::vector<Branch>& branches,
      const Ltx2TextEmbeddings& text) const;
  // Every live branch (RunBranches over LiveBranches).
  absl::StatusOr<std::map<Branch, BranchPrediction>> RunLiveBranches(
      const Ltx2DenoiseState& state, const Ltx2TextEmbeddings& text) const;

  // Guided x0 of both streams from the branch velocities (every live branch required).
  struct Guided {
    at::Tensor video_x0;
    at::Tensor audio_x0;
  };
  absl::StatusOr<Guided> Combine(const Ltx2DenoiseState& state,
                                 const std::map<Branch, BranchPrediction>& predictions) const;

  // Combine (or reuse on a skipped step), then StepGuided.
  absl::Status Step(Ltx2DenoiseState& state, const std::map<Branch, BranchPrediction>& predictions,
                    at::Tensor* guided_video_velocity = nullptr,
                    at::Tensor* guided_audio_velocity = nullptr) const;

  // ---- The PARALLEL form (file comment), for branches spread over ranks.
  struct StreamWeights {
    double video = 0.0;
    double audio = 0.0;
  };
  // The weight of every live branch at state.step, per stream (empty on a skipped step):
  //   cond 1 + Σ of the others' terms, negative 1 − cfg, perturbed −stg, modality 1 − mod,
  // a term counted only when its branch is live (as Combine); each stream's weights sum to 1.
  std::map<Branch, StreamWeights> GuidanceWeights(const Ltx2DenoiseState& state) const;
  // Σ w_b·x0_b over `predictions` (any subset of the live branches, possibly empty: then zeros),
  // float32 contiguous, shaped like state.video / state.audio. INVALID_ARGUMENT for a branch
  // that is not live; FAILED_PRECONDITION on a skipped step.
  absl::StatusOr<Guided> PartialGuidance(
      const Ltx2DenoiseState& state, const std::map<Branch, BranchPrediction>& predictions) const;
  // What the rescale needs from the cond branch: the unbiased std of its x0 over every non-batch
  // element, per batch row, float32 [B] for each stream (in Guided's two fields).
  Guided CondStd(const Ltx2DenoiseState& state, const BranchPrediction& cond) const;
  // The guided x0 from the sum over ALL live branches of PartialGuidance: applies each stream's
  // rescale with `cond_std` (CondStd; may be undefined for a stream whose rescale is 0).
  absl::StatusOr<Guided> FinishGuidance(const Guided& sum, const Guided& cond_std) const;
  // Converts this step's guided x0 to velocity, Euler-steps both streams, holds the conditioned
  // tokens, records the guided x0 for skip-step guidance and advances state.step. On a skipped
  // step `guided` must be empty (undefined tensors): the last guided x0 is reused.
  // `guided_video_velocity` / `..._audio_...` (optional) receive the velocities given to the
  // scheduler.
  absl::Status StepGuided(Ltx2DenoiseState& state, const Guided& guided,
                          at::Tensor* guided_video_velocity = nullptr,
                          at::Tensor* guided_audio_velocity = nullptr) const;

  // Runs every remaining step with RunLiveBranches.
  absl::Status Denoise(Ltx2DenoiseState& state, const Ltx2TextEmbeddings& text) const;

  // Unpacks and denormalises the latents and decodes them.
  absl::StatusOr<Ltx2Output> Decode(const Ltx2DenoiseState& state,
                                    const Ltx2DecodeOptions& options = {}) const;

  const GuidanceOptions& guidance() const { return guidance_; }
  const Ltx2Networks& networks() const { return networks_; }

 private:
  Ltx2Pipeline(const Ltx2Networks& networks, const GuidanceOptions& guidance)
      : networks_(networks), guidance_(guidance) {}

  Ltx2Networks networks_;
  GuidanceOptions guidance_;
};

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_PIPELINE_H_
