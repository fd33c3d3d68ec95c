#include "models/ltx2/ltx2_spec.h"

#include <cstring>
#include <filesystem>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/safetensors/safetensors.h"
#include "common/status/status_macros.h"
#include "models/ltx2/release_configs.h"
#include "models/ltx2/snapshot.h"

namespace diffmesh::models::ltx2 {
namespace {

// ltx2-tiny: the LTX-2.3 layout (gated attention, cross-attention AdaLN, STG-capable
// self-attention, per-modality connector projections, 2.3 VAE decoder blocks, BWE vocoder) at
// toy widths. The text encoder is a 4-layer Gemma-3 (5 hidden states of width 64 → connector
// input 320). Video: 8 latent channels, ×8 spatial and temporal → 64x64x9 is 8x8x2 latents;
// audio: 2 channels × 4 latent mel bins per token at 25 latents/s.
constexpr const char* kTinyTransformer = R"({
  "_class_name": "LTX2VideoTransformer3DModel", "activation_fn": "gelu-approximate",
  "attention_bias": true, "attention_head_dim": 16, "attention_out_bias": true,
  "audio_attention_head_dim": 8, "audio_cross_attention_dim": 16, "audio_cross_attn_mod": true,
  "audio_ff_bias": true, "audio_gated_attn": true, "audio_hop_length": 160,
  "audio_in_channels": 8, "audio_num_attention_heads": 2, "audio_out_channels": 8,
  "audio_patch_size": 1, "audio_patch_size_t": 1, "audio_pos_embed_max_pos": 20,
  "audio_sampling_rate": 16000, "audio_scale_factor": 4, "base_height": 2048,
  "base_width": 2048, "caption_channels": 64, "causal_offset": 1, "cross_attention_dim": 32,
  "cross_attn_mod": true, "cross_attn_timestep_scale_multiplier": 1000, "ff_bias": true,
  "gated_attn": true, "in_channels": 8, "norm_elementwise_affine": false, "norm_eps": 1e-06,
  "num_attention_heads": 2, "num_layers": 2, "out_channels": 8, "patch_size": 1,
  "patch_size_t": 1, "perturbed_attn": true, "pos_embed_max_pos": 20,
  "qk_norm": "rms_norm_across_heads", "rope_double_precision": true, "rope_theta": 10000.0,
  "rope_type": "split", "timestep_scale_multiplier": 1000,
  "use_keyframes_abs_pos_embedding": false, "use_prompt_adaln_single": true,
  "use_prompt_embeddings": false, "vae_scale_factors": [8, 8, 8]})";

constexpr const char* kTinyConnectors = R"({
  "_class_name": "LTX2TextConnectors", "audio_connector_attention_head_dim": 8,
  "audio_connector_num_attention_heads": 2, "audio_connector_num_layers": 1,
  "audio_connector_num_learnable_registers": 4, "audio_gated_attn": true,
  "audio_hidden_dim": 16, "caption_channels": 64, "causal_temporal_positioning": false,
  "connector_rope_base_seq_len": 4096, "per_modality_projections": true, "proj_bias": true,
  "rope_double_precision": true, "rope_theta": 10000.0, "rope_type": "split",
  "text_proj_in_factor": 5, "video_connector_attention_head_dim": 16,
  "video_connector_num_attention_heads": 2, "video_connector_num_layers": 1,
  "video_connector_num_learnable_registers": 4, "video_gated_attn": true,
  "video_hidden_dim": 32})";

// The encoder fields (four down blocks: ×8 in space and time) match the decoder's ratios, so an
// image encodes onto the pipeline's latent grid for image-to-video.
constexpr const char* kTinyVae = R"({
  "_class_name": "AutoencoderKLLTX2Video", "block_out_channels": [8, 16, 16, 16],
  "decoder_block_out_channels": [8, 16, 16, 32], "decoder_causal": false,
  "decoder_inject_noise": [false, false, false, false, false],
  "decoder_layers_per_block": [1, 1, 2, 1, 1], "decoder_spatial_padding_mode": "zeros",
  "decoder_spatio_temporal_scaling": [true, true, true, true],
  "down_block_types": ["LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D",
                       "LTX2VideoDownBlock3D"],
  "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
  "encoder_causal": true,
  "encoder_spatial_padding_mode": "zeros", "in_channels": 3, "latent_channels": 8,
  "layers_per_block": [1, 1, 1, 1, 1], "out_channels": 3, "patch_size": 1, "patch_size_t": 1,
  "resnet_norm_eps": 1e-06, "scaling_factor": 1.0, "spatial_compression_ratio": 8,
  "spatio_temporal_scaling": [true, true, true, true], "temporal_compression_ratio": 8,
  "timestep_conditioning": false, "upsample_factor": [2, 2, 1, 2],
  "upsample_residual": [false, false, false, false],
  "upsample_type": ["spatiotemporal", "spatiotemporal", "temporal", "spatial"]})";

// LTX-2.3-style spatial ×2 latent upsampler (conv + pixel shuffle, no rational resampler) on
// the tiny VAE's 8 latent channels; mid width 32 (a multiple of its 32 GroupNorm groups).
constexpr const char* kTinyLatentUpsampler = R"({
  "_class_name": "LTX2LatentUpsamplerModel", "in_channels": 8, "mid_channels": 32,
  "num_blocks_per_stage": 1, "dims": 3, "spatial_upsample": true, "temporal_upsample": false,
  "rational_spatial_scale": 2.0, "use_rational_resampler": false})";

constexpr const char* kTinyAudioVae = R"({
  "_class_name": "AutoencoderKLLTX2Audio", "attn_resolutions": null, "base_channels": 8,
  "causality_axis": "height", "ch_mult": [1, 2], "double_z": true, "dropout": 0.0,
  "in_channels": 2, "is_causal": true, "latent_channels": 2, "mel_bins": 16,
  "mel_hop_length": 160, "mid_block_add_attention": false, "norm_type": "pixel",
  "num_res_blocks": 1, "output_channels": 2, "resolution": 32, "sample_rate": 16000})";

constexpr const char* kTinyVocoder = R"({
  "_class_name": "LTX2VocoderWithBWE", "act_fn": "snakebeta", "antialias": true,
  "antialias_kernel_size": 12, "antialias_ratio": 2, "bwe_act_fn": "snakebeta",
  "bwe_antialias": true, "bwe_antialias_kernel_size": 12, "bwe_antialias_ratio": 2,
  "bwe_final_act_fn": null, "bwe_final_bias": false, "bwe_hidden_channels": 16,
  "bwe_in_channels": 16, "bwe_leaky_relu_negative_slope": 0.1, "bwe_out_channels": 2,
  "bwe_resnet_dilations": [[1, 3]], "bwe_resnet_kernel_sizes": [3],
  "bwe_upsample_factors": [3, 2, 2], "bwe_upsample_kernel_sizes": [7, 4, 4],
  "filter_length": 32, "final_act_fn": null, "final_bias": false, "hidden_channels": 32,
  "hop_length": 4, "in_channels": 32, "input_sampling_rate": 16000,
  "leaky_relu_negative_slope": 0.1, "num_mel_channels": 8, "out_channels": 2,
  "output_sampling_rate": 48000, "resnet_dilations": [[1, 3, 5]], "resnet_kernel_sizes": [3],
  "upsample_factors": [2, 2], "upsample_kernel_sizes": [4, 4], "window_length": 32})";

constexpr const char* kTinyTextEncoder = R"({
  "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
  "boi_token_index": 509, "eoi_token_index": 510, "image_token_index": 511,
  "eos_token_id": [1, 106], "mm_tokens_per_image": 4,
  "text_config": {
    "model_type": "gemma3_text", "attention_bias": false, "attention_dropout": 0.0,
    "attn_logit_softcapping": null, "final_logit_softcapping": null, "head_dim": 24,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64, "intermediate_size": 160,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                    "sliding_attention"],
    "max_position_embeddings": 1024, "num_attention_heads": 4, "num_hidden_layers": 4,
    "num_key_value_heads": 2, "query_pre_attn_scalar": 20, "rms_norm_eps": 1e-06,
    "rope_parameters": {
      "full_attention": {"factor": 8.0, "rope_theta": 1000000.0, "rope_type": "linear"},
      "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "sliding_window": 4, "sliding_window_pattern": 3, "vocab_size": 512,
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1}})";

constexpr const char* kScheduler = R"({
  "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 1024,
  "base_shift": 0.95, "invert_sigmas": false, "max_image_seq_len": 4096, "max_shift": 2.05,
  "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.1,
  "stochastic_sampling": false, "time_shift_type": "exponential", "use_beta_sigmas": false,
  "use_dynamic_shifting": true, "use_exponential_sigmas": false, "use_karras_sigmas": false})";

std::string Dir(const Ltx2Spec& spec, Ltx2Component c) {
  return (std::filesystem::path(spec.dir) / ComponentFolder(c)).string();
}

// `weights` moved to `device` in `dtype`.
WeightMap Moved(WeightMap weights, at::ScalarType dtype, const at::Device& device) {
  for (auto& [name, t] : weights) t = t.to(device, dtype);
  return weights;
}

// The seeded weights of a built-in component: drawn on `device` in `dtype` when the spec says
// so, else InitSeeded on the host (float32) and moved.
WeightMap SeededWeights(const Ltx2Spec& spec, Ltx2Component component,
                        const std::vector<ParamSpec>& params, at::ScalarType dtype,
                        const at::Device& device) {
  if (spec.draw_on_device) {
    return DrawWeightsOn(params, at::TensorOptions().dtype(dtype).device(device),
                         ComponentSeed(spec, component));
  }
  return Moved(InitSeeded(params, ComponentSeed(spec, component)), dtype, device);
}

// A network seeded on the host in float32, in `dtype` on `device`: itself when that is where it
// already is, else the same network over its moved weights.
template <typename Net>
absl::StatusOr<std::unique_ptr<Net>> Placed(std::unique_ptr<Net> net, at::ScalarType dtype,
                                             const at::Device& device) {
  if (dtype == at::kFloat && device == at::Device(at::kCPU)) return net;
  return Net::Create(net->config(), Moved(net->weights(), dtype, device));
}

// Protobuf wire-format writers for BuiltinTokenizerProto.
void Varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void VarintField(std::string& out, uint32_t number, uint64_t v) {
  Varint(out, (number << 3) | 0);
  Varint(out, v);
}
void BytesField(std::string& out, uint32_t number, const std::string& bytes) {
  Varint(out, (number << 3) | 2);
  Varint(out, bytes.size());
  out += bytes;
}

}  // namespace

const char* ComponentFolder(Ltx2Component component) {
  switch (component) {
    case Ltx2Component::kTransformer:
      return "transformer";
    case Ltx2Component::kVae:
      return "vae";
    case Ltx2Component::kAudioVae:
      return "audio_vae";
    case Ltx2Component::kVocoder:
      return "vocoder";
    case Ltx2Component::kConnectors:
      return "connectors";
    case Ltx2Component::kTextEncoder:
      return "text_encoder";
    case Ltx2Component::kLatentUpsampler:
      return "latent_upsampler";
  }
  return "";
}

uint64_t ComponentSeed(const Ltx2Spec& spec, Ltx2Component component) {
  return spec.seed * 1000003ULL + static_cast<uint64_t>(component);
}

std::vector<std::string> BuiltinModelNames() { return {"ltx2-tiny", kReleaseRandomModel}; }

absl::StatusOr<Ltx2Spec> BuiltinSpec(const std::string& name) {
  if (name == kReleaseRandomModel) return ReleaseSpec();
  if (name != "ltx2-tiny") {
    return absl::NotFoundError(absl::StrCat("unknown built-in LTX-2 model '", name, "'"));
  }
  Ltx2Spec spec;
  spec.name = name;
  spec.transformer = nlohmann::json::parse(kTinyTransformer);
  spec.connectors = nlohmann::json::parse(kTinyConnectors);
  spec.vae = nlohmann::json::parse(kTinyVae);
  spec.audio_vae = nlohmann::json::parse(kTinyAudioVae);
  spec.vocoder = nlohmann::json::parse(kTinyVocoder);
  spec.text_encoder = nlohmann::json::parse(kTinyTextEncoder);
  spec.scheduler = nlohmann::json::parse(kScheduler);
  // Its own component seed: adding it left every other component's weights as they were.
  spec.latent_upsampler = nlohmann::json::parse(kTinyLatentUpsampler);
  spec.seed = 20260805;
  spec.max_sequence_length = 16;
  return spec;
}

absl::StatusOr<Ltx2Spec> ResolveSpec(const std::string& model, const std::string& model_dir) {
  if (!model_dir.empty()) return SpecFromSnapshot(model_dir);
  return BuiltinSpec(model);
}

absl::Status CheckDevice(const Ltx2Spec& spec, const at::Device& device) {
  if (spec.cuda_only_reason.empty() || !device.is_cpu()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("model '", spec.name, "' does not run on the CPU (", spec.cuda_only_reason,
                   "); serve it on a CUDA device (--device cuda)"));
}

WeightMap DrawWeightsOn(const std::vector<ParamSpec>& params, const at::TensorOptions& options,
                        std::optional<uint64_t> seed) {
  std::optional<at::Generator> generator;
  if (seed.has_value()) {
    // A copy, so that nothing else drawing from the default generator meanwhile changes these
    // weights, and the default generator's own sequence is not reset by building a model.
    at::Generator device_default = at::globalContext().defaultGenerator(options.device());
    {
      std::lock_guard<std::mutex> lock(device_default.mutex());
      generator = device_default.clone();
    }
    generator->set_current_seed(*seed);
  }
  WeightMap weights;
  for (const ParamSpec& p : params) {
    at::Tensor t;
    switch (p.init) {
      case Init::kOnes:
        t = at::ones(p.shape, options);
        break;
      case Init::kZeros:
        t = at::zeros(p.shape, options);
        break;
      case Init::kNormal:
        // In place: no second tensor of the size of the largest weight (the text encoder's
        // 1 B-entry embedding table at the release size).
        t = at::empty(p.shape, options);
        if (generator.has_value()) {
          t.normal_(0.0, p.std, *generator);
        } else {
          t.normal_(0.0, p.std);
        }
        break;
    }
    weights.emplace(p.name, std::move(t));
  }
  return weights;
}

std::string BuiltinTokenizerProto() {
  // SentencePiece piece types.
  constexpr int kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6;
  std::string proto;
  auto piece = [&](const std::string& text, int type) {
    std::string body;
    BytesField(body, 1, text);
    Varint(body, (2 << 3) | 5);  // score 0.0f
    body.append(4, '\0');
    VarintField(body, 3, static_cast<uint64_t>(type));
    BytesField(proto, 1, body);
  };
  piece("<pad>", kControl);
  piece("<eos>", kControl);
  piece("<bos>", kControl);
  piece("<unk>", kUnknown);
  static const char* kHex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    piece(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", kByte);
  }
  piece("\xE2\x96\x81", kNormal);  // "▁"
  std::string trainer;
  VarintField(trainer, 3, 2);   // model_type BPE
  VarintField(trainer, 35, 1);  // byte_fallback
  VarintField(trainer, 40, 3);  // unk_id
  VarintField(trainer, 41, 2);  // bos_id
  VarintField(trainer, 42, 1);  // eos_id
  VarintField(trainer, 43, 0);  // pad_id
  BytesField(proto, 2, trainer);
  std::string normalizer;
  BytesField(normalizer, 1, "identity");
  VarintField(normalizer, 3, 0);  // add_dummy_prefix
  VarintField(normalizer, 4, 0);  // remove_extra_whitespaces
  VarintField(normalizer, 5, 1);  // escape_whitespaces
  BytesField(proto, 3, normalizer);
  return proto;
}

absl::StatusOr<std::unique_ptr<Ltx2Transformer>> BuildTransformer(const Ltx2Spec& spec,
                                                                  at::ScalarType dtype,
                                                                  at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  const bool cpu = device == at::Device(at::kCPU);
  if (!spec.dir.empty() && cpu)
    return Ltx2Transformer::FromConfig(Dir(spec, Ltx2Component::kTransformer), dtype);
  ASSIGN_OR_RETURN(auto config, Ltx2TransformerConfig::FromJson(spec.transformer));
  WeightMap weights;
  if (!spec.dir.empty()) {
    // As FromConfig reads it (in `dtype` on the host), then moved.
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint,
                     Checkpoint::Open(Dir(spec, Ltx2Component::kTransformer)));
    ASSIGN_OR_RETURN(weights, LoadWeights(*checkpoint, Ltx2Transformer::Params(config), dtype));
    weights = Moved(std::move(weights), dtype, device);
  } else {
    weights = SeededWeights(spec, Ltx2Component::kTransformer, Ltx2Transformer::Params(config),
                            dtype, device);
  }
  return Ltx2Transformer::Create(config, std::move(weights));
}

absl::StatusOr<std::unique_ptr<TextConnectors>> BuildConnectors(const Ltx2Spec& spec,
                                                                at::ScalarType dtype,
                                                                at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  std::unique_ptr<TextConnectors> built;
  if (!spec.dir.empty()) {
    ASSIGN_OR_RETURN(built, TextConnectors::Load(Dir(spec, Ltx2Component::kConnectors), dtype));
    if (device == at::Device(at::kCPU)) return built;
  } else {
    ASSIGN_OR_RETURN(auto config, ConnectorsConfig::FromJson(spec.connectors));
    if (spec.draw_on_device) {
      return TextConnectors::Create(
          config, SeededWeights(spec, Ltx2Component::kConnectors, TextConnectors::Params(config),
                                dtype, device));
    }
    ASSIGN_OR_RETURN(built, TextConnectors::CreateSeeded(
                                config, ComponentSeed(spec, Ltx2Component::kConnectors)));
    return Placed(std::move(built), dtype, device);
  }
  return TextConnectors::Create(built->config(), Moved(built->weights(), dtype, device));
}

absl::StatusOr<std::unique_ptr<Ltx2VideoDecoder>> BuildVideoDecoder(const Ltx2Spec& spec,
                                                                    at::ScalarType dtype,
                                                                    at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  if (!spec.dir.empty())
    return Ltx2VideoDecoder::Load(Dir(spec, Ltx2Component::kVae), dtype, device);
  ASSIGN_OR_RETURN(auto config, VideoVaeConfig::FromJson(spec.vae));
  ASSIGN_OR_RETURN(auto seeded, Ltx2VideoDecoder::CreateSeeded(
                                    config, ComponentSeed(spec, Ltx2Component::kVae)));
  return Placed(std::move(seeded), dtype, device);
}

absl::StatusOr<std::unique_ptr<Ltx2VideoEncoder>> BuildVideoEncoder(const Ltx2Spec& spec,
                                                                    at::ScalarType dtype,
                                                                    at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  if (!spec.dir.empty())
    return Ltx2VideoEncoder::Load(Dir(spec, Ltx2Component::kVae), dtype, device);
  ASSIGN_OR_RETURN(auto config, VideoVaeEncoderConfig::FromJson(spec.vae));
  // The decoder's seed: InitSeeded draws each tensor from its own name, so the shared
  // latents_mean / latents_std agree with the decoder's.
  ASSIGN_OR_RETURN(auto seeded, Ltx2VideoEncoder::CreateSeeded(
                                    config, ComponentSeed(spec, Ltx2Component::kVae)));
  return Placed(std::move(seeded), dtype, device);
}

absl::StatusOr<std::unique_ptr<AudioVaeDecoder>> BuildAudioDecoder(const Ltx2Spec& spec,
                                                                   at::ScalarType dtype,
                                                                   at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  if (!spec.dir.empty()) {
    return AudioVaeDecoder::Load(Dir(spec, Ltx2Component::kAudioVae), dtype, device);
  }
  ASSIGN_OR_RETURN(auto config, AudioVaeConfig::FromJson(spec.audio_vae));
  ASSIGN_OR_RETURN(auto seeded, AudioVaeDecoder::CreateSeeded(
                                    config, ComponentSeed(spec, Ltx2Component::kAudioVae)));
  return Placed(std::move(seeded), dtype, device);
}

absl::StatusOr<std::unique_ptr<Vocoder>> BuildVocoder(const Ltx2Spec& spec, at::ScalarType dtype,
                                                      at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  if (!spec.dir.empty()) return Vocoder::Load(Dir(spec, Ltx2Component::kVocoder), dtype, device);
  ASSIGN_OR_RETURN(auto config, VocoderConfig::FromJson(spec.vocoder));
  ASSIGN_OR_RETURN(auto seeded,
                   Vocoder::CreateSeeded(config, ComponentSeed(spec, Ltx2Component::kVocoder)));
  return Placed(std::move(seeded), dtype, device);
}

absl::StatusOr<std::unique_ptr<Gemma3TextModel>> BuildTextEncoder(const Ltx2Spec& spec,
                                                                  at::ScalarType dtype,
                                                                  at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  std::unique_ptr<Gemma3TextModel> built;
  if (!spec.dir.empty()) {
    ASSIGN_OR_RETURN(built,
                     Gemma3TextModel::Load(Dir(spec, Ltx2Component::kTextEncoder), dtype));
    if (device == at::Device(at::kCPU)) return built;
  } else {
    ASSIGN_OR_RETURN(auto config, Gemma3Config::FromJson(spec.text_encoder));
    if (spec.draw_on_device) {
      return Gemma3TextModel::Create(
          config, SeededWeights(spec, Ltx2Component::kTextEncoder,
                                Gemma3TextModel::Params(config), dtype, device));
    }
    ASSIGN_OR_RETURN(built, Gemma3TextModel::CreateSeeded(
                                config, ComponentSeed(spec, Ltx2Component::kTextEncoder)));
    return Placed(std::move(built), dtype, device);
  }
  return Gemma3TextModel::Create(built->config(), Moved(built->weights(), dtype, device));
}

absl::StatusOr<std::unique_ptr<GemmaTokenizer>> BuildTokenizer(const Ltx2Spec& spec) {
  if (!spec.dir.empty()) {
    return GemmaTokenizer::Load((std::filesystem::path(spec.dir) / "tokenizer").string());
  }
  return GemmaTokenizer::FromSerializedProto(BuiltinTokenizerProto());
}

absl::StatusOr<std::unique_ptr<Ltx2LatentUpsampler>> BuildLatentUpsampler(const Ltx2Spec& spec,
                                                                          at::ScalarType dtype,
                                                                          at::Device device) {
  RETURN_IF_ERROR(CheckDevice(spec, device));
  if (spec.latent_upsampler.is_null()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", spec.name, "' has no latent upsampler"));
  }
  if (!spec.dir.empty()) {
    return Ltx2LatentUpsampler::Load(Dir(spec, Ltx2Component::kLatentUpsampler), dtype, device);
  }
  ASSIGN_OR_RETURN(auto config, LatentUpsamplerConfig::FromJson(spec.latent_upsampler));
  ASSIGN_OR_RETURN(auto seeded, Ltx2LatentUpsampler::CreateSeeded(
                                    config, ComponentSeed(spec, Ltx2Component::kLatentUpsampler)));
  return Placed(std::move(seeded), dtype, device);
}

absl::StatusOr<SchedulerConfig> BuildSchedulerConfig(const Ltx2Spec& spec) {
  return SchedulerConfig::FromJson(spec.scheduler);
}

absl::StatusOr<Ltx2Models> BuildModels(const Ltx2Spec& spec, at::ScalarType dtype) {
  Ltx2Models m;
  ASSIGN_OR_RETURN(m.tokenizer, BuildTokenizer(spec));
  ASSIGN_OR_RETURN(m.text_encoder, BuildTextEncoder(spec, dtype));
  ASSIGN_OR_RETURN(m.connectors, BuildConnectors(spec, dtype));
  ASSIGN_OR_RETURN(m.transformer, BuildTransformer(spec, dtype));
  ASSIGN_OR_RETURN(m.video_vae, BuildVideoDecoder(spec));
  bool has_encoder = spec.dir.empty();
  if (!has_encoder) {
    ASSIGN_OR_RETURN(has_encoder, CheckpointHasVideoEncoder(Dir(spec, Ltx2Component::kVae)));
  }
  if (has_encoder) {
    ASSIGN_OR_RETURN(m.video_encoder, BuildVideoEncoder(spec));
  }
  ASSIGN_OR_RETURN(m.audio_vae, BuildAudioDecoder(spec));
  ASSIGN_OR_RETURN(m.vocoder, BuildVocoder(spec));
  ASSIGN_OR_RETURN(m.scheduler, BuildSchedulerConfig(spec));
  return m;
}

Gemma3TextModel::PromptEmbeds EncodePrompts(const Ltx2Models& models, const Ltx2Spec& spec,
                                            const std::vector<std::string>& prompts) {
  return models.text_encoder->EncodePrompts(
      models.tokenizer->EncodePrompts(prompts, spec.max_sequence_length));
}

at::ScalarType ServingDtype(Ltx2Component component, at::Device device) {
  if (!device.is_cuda()) return at::kFloat;
  switch (component) {
    case Ltx2Component::kTransformer:
    case Ltx2Component::kConnectors:
    case Ltx2Component::kTextEncoder:
      return at::kBFloat16;
    case Ltx2Component::kVae:
    case Ltx2Component::kAudioVae:
    case Ltx2Component::kVocoder:
    case Ltx2Component::kLatentUpsampler:
      return at::kFloat;
  }
  return at::kFloat;
}

}  // namespace diffmesh::models::ltx2
