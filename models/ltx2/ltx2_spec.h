// An LTX-2 model as the stages see it: the config.json of each component of an LTX2Pipeline
// snapshot (transformer, vae, audio_vae, vocoder, connectors, text_encoder, scheduler and the
// optional latent_upsampler) and where the weights come from — seeded random weights for the
// built-in configurations ("ltx2-tiny"; "ltx2.3-release-random", the released sizes, drawn on the
// GPU), or a snapshot folder (models/ltx2/snapshot.h). Each stage builds only the components it
// runs.
#ifndef DIFFMESH_MODELS_LTX2_LTX2_SPEC_H_
#define DIFFMESH_MODELS_LTX2_LTX2_SPEC_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/core/weights.h"
#include "models/ltx2/audio_vae.h"
#include "models/ltx2/connectors.h"
#include "models/ltx2/gemma3.h"
#include "models/ltx2/gemma_tokenizer.h"
#include "models/ltx2/pipeline.h"
#include "models/ltx2/scheduler.h"
#include "models/ltx2/transformer.h"
#include "models/ltx2/upsampler.h"
#include "models/ltx2/video_vae.h"
#include "models/ltx2/video_vae_encoder.h"
#include "models/ltx2/vocoder.h"
#include "nlohmann/json.hpp"

namespace diffmesh::models::ltx2 {

struct Ltx2Spec {
  std::string name;
  // Component configs in the checkpoint's config.json format. `text_encoder` is a
  // Gemma3ForConditionalGeneration config (text_config inside); `latent_upsampler` is null when
  // the model has none.
  nlohmann::json transformer, vae, audio_vae, vocoder, connectors, text_encoder, scheduler;
  nlohmann::json latent_upsampler;
  // Seed of the built-in weights; each component derives its own from it (ComponentSeed).
  uint64_t seed = 0;
  // Snapshot folder the weights and the tokenizer are read from; empty: seeded weights and the
  // built-in byte tokenizer (BuiltinTokenizerProto).
  std::string dir;
  // Pipeline defaults of the model.
  int64_t max_sequence_length = 1024;  // text tokens (a multiple of the connectors' registers)
  double frame_rate = 24.0;
  // Seeded weights (dir empty) of the transformer, the connectors and the text encoder drawn
  // directly on the builder's device in its dtype (DrawWeightsOn, seeded with ComponentSeed)
  // instead of drawn on the host in float32 and moved: no host copy of networks larger than host
  // memory. The same on every device of one type (every rank of a denoise group, each its own
  // process), but not equal to the host-drawn weights, nor across device types. The decoders,
  // the vocoder and the latent upsampler are host-seeded either way.
  bool draw_on_device = false;
  // Non-empty for a model that cannot run on the CPU: why. The builders then refuse a CPU device
  // (CheckDevice) before allocating anything.
  std::string cuda_only_reason;
};

enum class Ltx2Component {
  kTransformer = 1,
  kVae = 2,
  kAudioVae = 3,
  kVocoder = 4,
  kConnectors = 5,
  kTextEncoder = 6,
  kLatentUpsampler = 7,
};
// Folder name of a component in the snapshot layout ("transformer", "vae", ...).
const char* ComponentFolder(Ltx2Component component);
uint64_t ComponentSeed(const Ltx2Spec& spec, Ltx2Component component);

// Names of the built-in models ("ltx2-tiny": LTX-2.3-style, 2 layers, Gemma-3 text encoder of
// 4 layers, BWE vocoder at 48 kHz, spatial ×2 latent upsampler; a 3-step 9-frame 64x64 guided
// run with audio takes about a second on 2 CPU cores. "ltx2.3-release-random": the released
// LTX-2.3 sizes, models/ltx2/release_configs.h, CUDA only, weights drawn on the device).
std::vector<std::string> BuiltinModelNames();
// NOT_FOUND naming the model when unknown.
absl::StatusOr<Ltx2Spec> BuiltinSpec(const std::string& name);
// The snapshot in `model_dir` (SpecFromSnapshot) when set, else the built-in `model`.
absl::StatusOr<Ltx2Spec> ResolveSpec(const std::string& model, const std::string& model_dir);

// FAILED_PRECONDITION naming the model and spec.cuda_only_reason when `device` is the CPU and
// the model cannot run there; OK otherwise. Every builder below checks it first.
absl::Status CheckDevice(const Ltx2Spec& spec, const at::Device& device);

// Weights for `params` created on the device of `options` in its dtype: ones / zeros / N(0, std²)
// as each ParamSpec says, drawn in the order of `params`. With `seed`, from a copy of the
// device's default generator seeded with it (the default generator itself is left as it was),
// so equal seeds give equal weights on devices of one type; without, from the default generator
// as it stands.
WeightMap DrawWeightsOn(const std::vector<ParamSpec>& params, const at::TensorOptions& options,
                        std::optional<uint64_t> seed);

// A SentencePiece ModelProto (byte fallback, no merges) for built-in models: ids 0..3 are
// <pad>, <eos>, <bos>, <unk>, 4 + b is the byte b, then "▁". Written as tokenizer/tokenizer.model.
std::string BuiltinTokenizerProto();

// Builders, in `dtype` on `device` where the network allows (the BWE vocoder is float32 always).
// With spec.dir set the weights are read from the snapshot (checked by name and shape, errors
// naming tensor and file) on the host, then moved; else they are the seeded ones (drawn on
// `device` for the transformer, connectors and text encoder when spec.draw_on_device). The video
// VAE and audio VAE builders return the decoders (BuildVideoEncoder the video encoder; the audio
// encoder is not ported).
absl::StatusOr<std::unique_ptr<Ltx2Transformer>> BuildTransformer(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<TextConnectors>> BuildConnectors(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> BuildVideoDecoder(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
// The video VAE's encoder, for image-to-video (EncodeConditioningImage); float32 unless asked.
// With spec.dir set, NOT_FOUND naming the tensor when the snapshot's vae has no encoder.
absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> BuildVideoEncoder(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> BuildAudioDecoder(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<Vocoder>> BuildVocoder(const Ltx2Spec& spec,
                                                      at::ScalarType dtype = at::kFloat,
                                                      at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<Gemma3TextModel>> BuildTextEncoder(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
absl::StatusOr<std::unique_ptr<GemmaTokenizer>> BuildTokenizer(const Ltx2Spec& spec);
// FAILED_PRECONDITION when the spec has no latent upsampler.
absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> BuildLatentUpsampler(
    const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
absl::StatusOr<SchedulerConfig> BuildSchedulerConfig(const Ltx2Spec& spec);

// Every network a text/image-to-video-with-audio run needs (no latent upsampler), owned.
struct Ltx2Models {
  std::unique_ptr<GemmaTokenizer> tokenizer;
  std::unique_ptr<Gemma3TextModel> text_encoder;
  std::unique_ptr<TextConnectors> connectors;
  std::unique_ptr<Ltx2Transformer> transformer;
  std::unique_ptr<Ltx2VideoDecoder> video_vae;
  // Image-to-video only; null when a snapshot's vae holds no encoder weights.
  std::unique_ptr<Ltx2VideoEncoder> video_encoder;
  std::unique_ptr<AudioVaeDecoder> audio_vae;
  std::unique_ptr<Vocoder> vocoder;
  SchedulerConfig scheduler;

  // Non-owning view for Ltx2Pipeline::Create.
  Ltx2Networks networks() const {
    return {transformer.get(), connectors.get(), video_vae.get(),
            audio_vae.get(),   vocoder.get(),    scheduler};
  }
};
// `dtype` for the transformer, connectors and text encoder; the decoders stay float32.
absl::StatusOr<Ltx2Models> BuildModels(const Ltx2Spec& spec, at::ScalarType dtype = at::kFloat);

// Tokenises `prompts` (left-padded to spec.max_sequence_length) and runs the text encoder:
// stacked hidden states [B, T, hidden·(layers+1)] and the int64 mask [B, T], the connectors'
// input.
Gemma3TextModel::PromptEmbeds EncodePrompts(const Ltx2Models& models, const Ltx2Spec& spec,
                                            const std::vector<std::string>& prompts);

// The dtype a component's weights are kept in when serving on `device`: on CUDA bf16 for the
// transformer, the connectors and the text encoder (which computes in float32 over its bf16
// weights, Gemma3TextModel::Forward), float32 for the decoders, the vocoder, the video encoder
// and the latent upsampler, whose convolution stacks drift 1.0–1.8e-2 from float32 in bf16 on
// the reference fixtures (models/ltx2/bf16_test.cc prints the figures); float32 on the CPU.
// Float32 work on CUDA runs on TF32 tensor cores (UseTensorCoresForFloat32).
at::ScalarType ServingDtype(Ltx2Component component, at::Device device);

}  // namespace diffmesh::models::ltx2

#endif  // DIFFMESH_MODELS_LTX2_LTX2_SPEC_H_
