#include "models/ltx2/release_configs.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"

namespace diffmesh::models::ltx2 {

nlohmann::json ReleaseTransformerConfig() {
  return {{"_class_name", "LTX2VideoTransformer3DModel"},
          {"in_channels", 128},
          {"out_channels", 128},
          {"patch_size", 1},
          {"patch_size_t", 1},
          {"num_attention_heads", 32},
          {"attention_head_dim", 128},
          {"cross_attention_dim", 4096},
          {"vae_scale_factors", {8, 32, 32}},
          {"audio_in_channels", 128},
          {"audio_out_channels", 128},
          {"audio_num_attention_heads", 32},
          {"audio_attention_head_dim", 64},
          {"audio_cross_attention_dim", 2048},
          {"num_layers", 48},
          {"caption_channels", 3840},
          {"gated_attn", true},
          {"audio_gated_attn", true},
          {"cross_attn_mod", true},
          {"audio_cross_attn_mod", true},
          {"use_prompt_embeddings", false},
          {"perturbed_attn", true},
          {"rope_type", "split"},
          {"rope_double_precision", true},
          {"norm_elementwise_affine", false}};
}

nlohmann::json ReleaseConnectorsConfig() {
  return {{"_class_name", "LTX2TextConnectors"},
          {"caption_channels", 3840},
          {"text_proj_in_factor", 49},
          {"video_connector_num_attention_heads", 32},
          {"video_connector_attention_head_dim", 128},
          {"video_connector_num_layers", 8},
          {"video_connector_num_learnable_registers", 128},
          {"video_gated_attn", true},
          {"audio_connector_num_attention_heads", 32},
          {"audio_connector_attention_head_dim", 64},
          {"audio_connector_num_layers", 8},
          {"audio_connector_num_learnable_registers", 128},
          {"audio_gated_attn", true},
          {"connector_rope_base_seq_len", 4096},
          {"rope_theta", 10000.0},
          {"rope_double_precision", true},
          {"causal_temporal_positioning", false},
          {"rope_type", "split"},
          {"per_modality_projections", true},
          {"video_hidden_dim", 4096},
          {"audio_hidden_dim", 2048},
          {"proj_bias", true}};
}

nlohmann::json ReleaseVideoVaeConfig() {
  return {{"_class_name", "AutoencoderKLLTX2Video"},
          {"in_channels", 3},
          {"out_channels", 3},
          {"latent_channels", 128},
          {"block_out_channels", {256, 512, 1024, 1024}},
          {"down_block_types",
           {"LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D", "LTX2VideoDownBlock3D",
            "LTX2VideoDownBlock3D"}},
          {"decoder_block_out_channels", {256, 512, 512, 1024}},
          {"layers_per_block", {4, 6, 4, 2, 2}},
          {"decoder_layers_per_block", {4, 6, 4, 2, 2}},
          {"spatio_temporal_scaling", {true, true, true, true}},
          {"decoder_spatio_temporal_scaling", {true, true, true, true}},
          {"decoder_inject_noise", {false, false, false, false, false}},
          {"downsample_type", {"spatial", "temporal", "spatiotemporal", "spatiotemporal"}},
          {"upsample_type", {"spatiotemporal", "spatiotemporal", "temporal", "spatial"}},
          {"upsample_residual", {false, false, false, false}},
          {"upsample_factor", {2, 2, 1, 2}},
          {"timestep_conditioning", false},
          {"patch_size", 4},
          {"patch_size_t", 1},
          {"resnet_norm_eps", 1e-6},
          {"encoder_causal", true},
          {"decoder_causal", false},
          {"encoder_spatial_padding_mode", "zeros"},
          {"decoder_spatial_padding_mode", "zeros"},
          {"spatial_compression_ratio", 32},
          {"temporal_compression_ratio", 8},
          {"scaling_factor", 1.0}};
}

nlohmann::json ReleaseAudioVaeConfig() {
  return {{"_class_name", "AutoencoderKLLTX2Audio"},
          {"base_channels", 128},
          {"output_channels", 2},
          {"ch_mult", {1, 2, 4}},
          {"num_res_blocks", 2},
          {"attn_resolutions", nullptr},
          {"in_channels", 2},
          {"resolution", 256},
          {"latent_channels", 8},
          {"norm_type", "pixel"},
          {"causality_axis", "height"},
          {"dropout", 0.0},
          {"mid_block_add_attention", false},
          {"sample_rate", 16000},
          {"mel_hop_length", 160},
          {"is_causal", true},
          {"mel_bins", 64},
          {"double_z", true}};
}

nlohmann::json ReleaseVocoderConfig() {
  const nlohmann::json dilations = {{1, 3, 5}, {1, 3, 5}, {1, 3, 5}};
  return {{"_class_name", "LTX2VocoderWithBWE"},
          {"in_channels", 128},
          {"hidden_channels", 1536},
          {"out_channels", 2},
          {"upsample_kernel_sizes", {11, 4, 4, 4, 4, 4}},
          {"upsample_factors", {5, 2, 2, 2, 2, 2}},
          {"resnet_kernel_sizes", {3, 7, 11}},
          {"resnet_dilations", dilations},
          {"act_fn", "snakebeta"},
          {"leaky_relu_negative_slope", 0.1},
          {"antialias", true},
          {"antialias_ratio", 2},
          {"antialias_kernel_size", 12},
          {"final_act_fn", nullptr},
          {"final_bias", false},
          {"bwe_in_channels", 128},
          {"bwe_hidden_channels", 512},
          {"bwe_out_channels", 2},
          {"bwe_upsample_kernel_sizes", {12, 11, 4, 4, 4}},
          {"bwe_upsample_factors", {6, 5, 2, 2, 2}},
          {"bwe_resnet_kernel_sizes", {3, 7, 11}},
          {"bwe_resnet_dilations", dilations},
          {"bwe_act_fn", "snakebeta"},
          {"bwe_leaky_relu_negative_slope", 0.1},
          {"bwe_antialias", true},
          {"bwe_antialias_ratio", 2},
          {"bwe_antialias_kernel_size", 12},
          {"bwe_final_act_fn", nullptr},
          {"bwe_final_bias", false},
          {"filter_length", 512},
          {"hop_length", 80},
          {"window_length", 512},
          {"num_mel_channels", 64},
          {"input_sampling_rate", 16000},
          {"output_sampling_rate", 48000}};
}

nlohmann::json ReleaseTextEncoderConfig() {
  // Gemma 3 12B: every sixth layer global, the others a 1024-token sliding window.
  nlohmann::json layer_types = nlohmann::json::array();
  for (int i = 0; i < 48; ++i) {
    layer_types.push_back(i % 6 == 5 ? "full_attention" : "sliding_attention");
  }
  return {{"architectures", {"Gemma3ForConditionalGeneration"}},
          {"model_type", "gemma3"},
          {"text_config",
           {{"model_type", "gemma3_text"},
            {"attention_bias", false},
            {"attention_dropout", 0.0},
            {"attn_logit_softcapping", nullptr},
            {"final_logit_softcapping", nullptr},
            {"head_dim", 256},
            {"hidden_activation", "gelu_pytorch_tanh"},
            {"hidden_size", 3840},
            {"intermediate_size", 15360},
            {"layer_types", layer_types},
            {"max_position_embeddings", 131072},
            {"num_attention_heads", 16},
            {"num_hidden_layers", 48},
            {"num_key_value_heads", 8},
            {"query_pre_attn_scalar", 256},
            {"rms_norm_eps", 1e-6},
            {"rope_parameters",
             {{"full_attention", {{"factor", 8.0}, {"rope_theta", 1000000.0}, {"rope_type", "linear"}}},
              {"sliding_attention", {{"rope_theta", 10000.0}, {"rope_type", "default"}}}}},
            {"sliding_window", 1024},
            {"sliding_window_pattern", 6},
            {"vocab_size", 262208},
            {"pad_token_id", 0},
            {"bos_token_id", 2},
            {"eos_token_id", 1}}}};
}

namespace {

// Why the release model needs a GPU: its device-drawn networks' parameters, in bf16.
std::string CudaOnlyReason(const Ltx2Spec& spec) {
  int64_t params = 0;
  auto count = [&](const std::vector<ParamSpec>& specs) {
    for (const ParamSpec& p : specs) {
      int64_t n = 1;
      for (int64_t d : p.shape) n *= d;
      params += n;
    }
  };
  if (auto c = Ltx2TransformerConfig::FromJson(spec.transformer); c.ok()) {
    count(Ltx2Transformer::Params(*c));
  }
  if (auto c = ConnectorsConfig::FromJson(spec.connectors); c.ok()) {
    count(TextConnectors::Params(*c));
  }
  if (auto c = Gemma3Config::FromJson(spec.text_encoder); c.ok()) {
    count(Gemma3TextModel::Params(*c));
  }
  const int64_t tenths = (params + 50'000'000) / 100'000'000;  // of a billion
  return absl::StrCat("its transformer, text connectors and Gemma 3 text encoder hold ",
                      tenths / 10, ".", tenths % 10, " B parameters, ",
                      (2 * params + 500'000'000) / 1'000'000'000,
                      " GB of GPU memory in bf16; their random weights are drawn on the GPU only");
}

}  // namespace

Ltx2Spec ReleaseSpec() {
  Ltx2Spec spec = *BuiltinSpec("ltx2-tiny");  // for its (release) scheduler
  spec.name = "ltx2.3-release-random";
  spec.transformer = ReleaseTransformerConfig();
  spec.connectors = ReleaseConnectorsConfig();
  spec.vae = ReleaseVideoVaeConfig();
  spec.audio_vae = ReleaseAudioVaeConfig();
  spec.vocoder = ReleaseVocoderConfig();
  spec.text_encoder = ReleaseTextEncoderConfig();
  spec.latent_upsampler = nullptr;
  spec.max_sequence_length = 1024;
  spec.frame_rate = 24.0;
  spec.draw_on_device = true;
  spec.cuda_only_reason = CudaOnlyReason(spec);
  return spec;
}

WeightMap RandomWeightsOn(const std::vector<ParamSpec>& specs, const at::TensorOptions& options) {
  return DrawWeightsOn(specs, options, std::nullopt);
}

absl::StatusOr<Ltx2Models> BuildReleaseModels(at::ScalarType dtype, at::Device device,
                                              at::ScalarType decoder_dtype) {
  const Ltx2Spec spec = ReleaseSpec();
  // Each decoder in `decoder_dtype`, or where unset in its serving dtype.
  auto decoder = [&](Ltx2Component c) {
    return decoder_dtype == at::ScalarType::Undefined ? ServingDtype(c, device) : decoder_dtype;
  };
  Ltx2Models m;
  ASSIGN_OR_RETURN(m.tokenizer, BuildTokenizer(spec));
  ASSIGN_OR_RETURN(m.text_encoder, BuildTextEncoder(spec, dtype, device));
  ASSIGN_OR_RETURN(m.connectors, BuildConnectors(spec, dtype, device));
  ASSIGN_OR_RETURN(m.transformer, BuildTransformer(spec, dtype, device));
  ASSIGN_OR_RETURN(m.video_vae, BuildVideoDecoder(spec, decoder(Ltx2Component::kVae), device));
  ASSIGN_OR_RETURN(m.audio_vae,
                   BuildAudioDecoder(spec, decoder(Ltx2Component::kAudioVae), device));
  ASSIGN_OR_RETURN(m.vocoder, BuildVocoder(spec, ServingDtype(Ltx2Component::kVocoder, device),
                                           device));
  ASSIGN_OR_RETURN(m.scheduler, BuildSchedulerConfig(spec));
  return m;
}

}  // namespace diffmesh::models::ltx2
