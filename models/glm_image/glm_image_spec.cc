#include "models/glm_image/glm_image_spec.h"

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "models/glm_image/snapshot.h"

namespace diffmesh::models::glm_image {
namespace {

using json = nlohmann::json;

// glm-image-tiny: every component of GLM-Image at a size that runs a 256×256 image on two CPU
// cores in seconds. Token layout of its AR vocabulary: VQ codes 0..255, image start/end 256/257,
// vision vocabulary 320, then byte tokens and the grid/bos specials (see ArTokenizerSpec).
GlmImageSpec Tiny() {
  GlmImageSpec s;
  s.name = "glm-image-tiny";
  s.seed = 20261124;
  s.transformer = json::parse(R"({
    "_class_name": "GlmImageTransformer2DModel", "attention_head_dim": 32, "condition_dim": 32,
    "in_channels": 16, "num_attention_heads": 4, "num_layers": 2, "out_channels": 16,
    "patch_size": 2, "prior_vq_quantizer_codebook_size": 256, "text_embed_dim": 64,
    "time_embed_dim": 64})");
  s.vae = json::parse(R"({
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 1,
    "norm_num_groups": 8, "mid_block_add_attention": true, "scaling_factor": 0.18215,
    "shift_factor": null, "use_quant_conv": true, "use_post_quant_conv": true, "force_upcast": true,
    "latents_mean": [-0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
    "latents_std": [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25]})");
  s.text_encoder = json::parse(R"({
    "architectures": ["T5EncoderModel"], "d_ff": 128, "d_kv": 16, "d_model": 64,
    "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "is_gated_act": true,
    "layer_norm_epsilon": 1e-6, "model_type": "t5", "num_heads": 4, "num_layers": 2,
    "pad_token_id": 0, "eos_token_id": 1, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "vocab_size": 384})");
  s.vision_language_encoder = json::parse(R"({
    "architectures": ["GlmImageForConditionalGeneration"], "model_type": "glm_image",
    "image_token_id": 600, "image_start_token_id": 256, "image_end_token_id": 257,
    "text_config": {
      "attention_bias": true, "hidden_act": "silu", "hidden_size": 128, "intermediate_size": 256,
      "max_position_embeddings": 4096, "num_attention_heads": 4, "num_hidden_layers": 2,
      "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "vision_vocab_size": 320, "vocab_size": 640,
      "bos_token_id": 578, "eos_token_id": 257, "pad_token_id": 0,
      "rope_parameters": {"mrope_section": [4, 6, 6], "rope_theta": 10000.0, "rope_type": "default"}},
    "vision_config": {
      "attention_bias": true, "depth": 2, "hidden_act": "gelu", "hidden_size": 64,
      "image_size": 256, "in_channels": 3, "intermediate_size": 128, "layer_norm_eps": 1e-6,
      "num_heads": 2, "patch_size": 16, "spatial_merge_size": 1},
    "vq_config": {"embed_dim": 32, "in_channels": 3, "latent_channels": 64, "num_embeddings": 256}})");
  s.image_processor = json::parse(R"({
    "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "merge_size": 1, "patch_size": 16,
    "resample": 3, "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 262144, "shortest_edge": 4096}, "temporal_patch_size": 1})");
  s.scheduler = json::parse(R"({
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.25,
    "invert_sigmas": false, "max_image_seq_len": 4096, "max_shift": 0.75,
    "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": null, "stochastic_sampling": false,
    "time_shift_type": "linear", "use_beta_sigmas": false, "use_dynamic_shifting": true,
    "use_exponential_sigmas": false, "use_karras_sigmas": false})");
  s.tokenizer.byte_offset = 320;
  s.tokenizer.grid_bos_id = 576;
  s.tokenizer.grid_eos_id = 577;
  s.tokenizer.bos_id = 578;
  s.tokenizer.max_prompt_tokens = 2048;
  return s;
}

}  // namespace

uint64_t ComponentSeed(const GlmImageSpec& spec, Component component) {
  return spec.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(component);
}

std::vector<std::string> BuiltinModelNames() { return {"glm-image-tiny"}; }

absl::StatusOr<GlmImageSpec> BuiltinSpec(const std::string& name) {
  if (name == "glm-image-tiny") return Tiny();
  return absl::NotFoundError(absl::StrCat("model: '", name, "' is not a built-in model"));
}

absl::StatusOr<GlmImageSpec> ResolveSpec(const std::string& model, const std::string& model_dir) {
  if (!model_dir.empty()) return SpecFromSnapshot(model_dir);
  return BuiltinSpec(model);
}

absl::StatusOr<std::unique_ptr<GlmImageDit>> BuildDit(const GlmImageSpec& spec,
                                                      at::ScalarType dtype,
                                                      TensorParallelShard tp, at::Device device) {
  ASSIGN_OR_RETURN(DitConfig config, DitConfig::FromJson(spec.transformer));
  if (!spec.dir.empty()) {
    if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size ||
        config.num_attention_heads % tp.size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor parallel rank ", tp.rank, " of ",
                                                     tp.size, " for ", config.num_attention_heads,
                                                     " heads"));
    }
    WeightLoadOptions load;
    load.dtype = dtype;
    load.device = device;
    load.tp_dim = &GlmImageDit::TensorParallelDim;
    load.tp_rank = tp.rank;
    load.tp_size = tp.size;
    ASSIGN_OR_RETURN(WeightMap w,
                     LoadComponentWeights(SnapshotComponentDir(spec, Component::kTransformer),
                                          GlmImageDit::Params(config), load));
    return GlmImageDit::CreateFromSlices(config, std::move(w), tp);
  }
  // Drawn in fp32 on the CPU (the same weights on every device), then converted.
  WeightMap w =
      InitSeeded(GlmImageDit::Params(config), ComponentSeed(spec, Component::kTransformer));
  for (auto& [name, t] : w) t = t.to(device, dtype);
  return GlmImageDit::Create(config, std::move(w), tp);
}

absl::StatusOr<std::unique_ptr<AutoencoderKl>> BuildVaeDecoder(const GlmImageSpec& spec,
                                                               at::ScalarType dtype,
                                                               at::Device device) {
  ASSIGN_OR_RETURN(VaeConfig config, VaeConfig::FromJson(spec.vae));
  const auto params = AutoencoderKl::Params(config, VaeParts::kDecoderOnly);
  WeightMap w;
  if (!spec.dir.empty()) {
    WeightLoadOptions load;
    load.dtype = dtype;
    load.device = device;
    load.ignored_prefixes = {"encoder.", "quant_conv."};  // the encoder half of the checkpoint
    ASSIGN_OR_RETURN(
        w, LoadComponentWeights(SnapshotComponentDir(spec, Component::kVae), params, load));
  } else {
    w = InitSeeded(params, ComponentSeed(spec, Component::kVae));
    for (auto& [name, t] : w) t = t.to(device, dtype);
  }
  return AutoencoderKl::Create(config, std::move(w), VaeParts::kDecoderOnly);
}

absl::StatusOr<std::unique_ptr<T5Encoder>> BuildTextEncoder(const GlmImageSpec& spec) {
  ASSIGN_OR_RETURN(T5Config config, T5Config::FromJson(spec.text_encoder));
  if (!spec.dir.empty()) {
    WeightLoadOptions load;
    // The token embedding is tied: transformers stores it as shared.weight, possibly also (or
    // only) as encoder.embed_tokens.weight.
    load.aliases = {{"shared.weight", {"encoder.embed_tokens.weight"}}};
    ASSIGN_OR_RETURN(WeightMap w,
                     LoadComponentWeights(SnapshotComponentDir(spec, Component::kTextEncoder),
                                          T5Encoder::Params(config), load));
    return T5Encoder::Create(config, std::move(w));
  }
  return T5Encoder::CreateSeeded(config, ComponentSeed(spec, Component::kTextEncoder));
}

absl::StatusOr<std::unique_ptr<ArModel>> BuildArModel(const GlmImageSpec& spec,
                                                      const ArModelOptions& options) {
  ASSIGN_OR_RETURN(ArConfig config, ArConfig::FromJson(spec.vision_language_encoder));
  if (!spec.dir.empty()) {
    WeightLoadOptions load;
    load.dtype = options.dtype;
    load.device = options.device;
    load.ignored_prefixes = ArModel::IgnoredPrefixes();  // vision tower and VQ model
    ASSIGN_OR_RETURN(WeightMap w, LoadComponentWeights(
                                      SnapshotComponentDir(spec, Component::kVisionLanguageEncoder),
                                      ArModel::Params(config), load));
    return ArModel::Create(config, w, options);
  }
  return ArModel::Create(
      config,
      InitSeeded(ArModel::Params(config), ComponentSeed(spec, Component::kVisionLanguageEncoder)),
      options);
}

absl::StatusOr<std::unique_ptr<FlowMatchEulerScheduler>> BuildScheduler(const GlmImageSpec& spec) {
  ASSIGN_OR_RETURN(SchedulerConfig config, SchedulerConfig::FromJson(spec.scheduler));
  return FlowMatchEulerScheduler::Create(config);
}

absl::StatusOr<std::unique_ptr<AutoencoderKl>> BuildVae(const GlmImageSpec& spec,
                                                        at::ScalarType dtype, at::Device device) {
  ASSIGN_OR_RETURN(VaeConfig config, VaeConfig::FromJson(spec.vae));
  const auto params = AutoencoderKl::Params(config, VaeParts::kAll);
  WeightMap w;
  if (!spec.dir.empty()) {
    WeightLoadOptions load;
    load.dtype = dtype;
    load.device = device;
    ASSIGN_OR_RETURN(
        w, LoadComponentWeights(SnapshotComponentDir(spec, Component::kVae), params, load));
  } else {
    // Per-name seeding: the decoder's weights equal BuildVaeDecoder's.
    w = InitSeeded(params, ComponentSeed(spec, Component::kVae));
    for (auto& [name, t] : w) t = t.to(device, dtype);
  }
  return AutoencoderKl::Create(config, std::move(w), VaeParts::kAll);
}

absl::StatusOr<std::unique_ptr<GlmImageVisionTokenizer>> BuildVisionTokenizer(
    const GlmImageSpec& spec, at::ScalarType dtype, at::Device device) {
  if (!spec.vision_language_encoder.contains("vision_config")) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", spec.name, "': vision_language_encoder has no vision_config"));
  }
  ASSIGN_OR_RETURN(VisionTokenizerConfig config,
                   VisionTokenizerConfig::FromJson(spec.vision_language_encoder));
  const auto params = GlmImageVisionTokenizer::Params(config);
  WeightMap w;
  if (!spec.dir.empty()) {
    WeightLoadOptions load;
    load.dtype = dtype;
    load.device = device;
    load.ignored_prefixes = GlmImageVisionTokenizer::IgnoredPrefixes();  // the text decoder
    ASSIGN_OR_RETURN(w, LoadComponentWeights(
                            SnapshotComponentDir(spec, Component::kVisionLanguageEncoder), params,
                            load));
  } else {
    // Per-name seeding: the text decoder's weights (BuildArModel) are unaffected.
    w = InitSeeded(params, ComponentSeed(spec, Component::kVisionLanguageEncoder));
    for (auto& [name, t] : w) t = t.to(device, dtype);
  }
  return GlmImageVisionTokenizer::Create(config, std::move(w));
}

absl::StatusOr<ArImageProcessorConfig> BuildArImageProcessorConfig(const GlmImageSpec& spec) {
  if (!spec.image_processor.is_null() && !spec.image_processor.empty()) {
    return ArImageProcessorConfig::FromJson(spec.image_processor);
  }
  if (spec.dir.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", spec.name, "' has no image processor config"));
  }
  return ArImageProcessorConfig::FromFile(spec.dir + "/processor/preprocessor_config.json");
}

}  // namespace diffmesh::models::glm_image
